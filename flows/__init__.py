"""The DAGs: train, retrain, deploy, sweep, release — composition only.

The steps log on `trainkite.*` loggers (PREFECT_LOGGING_EXTRA_LOGGERS=trainkite sends them to the
Prefect UI); INFO is where per-epoch progress lives, so runs show it unless the user chose a level.
"""

import logging

from trainkite.home import configure_wandb_dirs

if logging.getLogger("trainkite").level == logging.NOTSET:
    logging.getLogger("trainkite").setLevel(logging.INFO)

# A flow run a worker starts gets no CLI setup: its W&B files go to the W&B dir, not the code folder.
configure_wandb_dirs()
