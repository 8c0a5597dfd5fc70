"""The pipeline's steps as plain, typed functions (no Prefect import here).

`flows/steps.py` wraps each one in a thin Prefect `@task`; the serving app, the CLI and
the tests import the plain functions directly.
"""
