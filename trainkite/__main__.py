from trainkite.cli import main

main()
