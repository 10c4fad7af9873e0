"""Shipping the scoring service to AWS: ECR repository, release to EC2 through SSM, smoke test, rollback.

``python -m src.deploy ensure-registry | release TAG | status | config | promoted`` (see cli.py).
The work is done by plain functions that take boto3 clients, so the tests drive them
against a real moto server and the GitHub workflows call the very same CLI.
"""
