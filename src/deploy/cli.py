"""``python -m src.deploy``: the command line the GitHub workflows (and people) use to ship the service.

    python -m src.deploy ensure-registry [--name NAME]   # ECR repository, scan on push, immutable tags; prints URI
    python -m src.deploy release TAG [--smoke-url URL]   # one host at a time: out of the balancer, SSM pull +
                                                         # restart + smoke test on the host, back in, smoke
                                                         # test; rollback on failure
    python -m src.deploy status                          # current tag, last release and command, instances
    python -m src.deploy config                          # key=value lines for $GITHUB_OUTPUT
    python -m src.deploy champion                        # version=<the registry's champion now>
    python -m src.deploy promoted --before VERSION       # did the champion move since? (promoted=true|false)
    python -m src.deploy secrets push --credentials auth/credentials.json [--new-secret-key] [--smoke-key]
                                                         # SSM SecureStrings (--smoke-key: $API_KEY)
    python -m src.deploy secrets sync                    # every instance re-reads the credentials (no restart)

Defaults come from params.yaml's ``deploy:`` section; flags override them. Exit
codes: 0 done; 1 the release failed (rolled back when there was a tag to return
to) or AWS refused; 2 nothing to release to or with (no instances, repository,
image) or bad configuration. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from src.common import PipelineError, setup_logging
from src.config import PARAMS_FILE, ConfigError, DeploySettings, deploy_settings, env, load_settings
from src.deploy import ecr as ecr_ops
from src.deploy import fleet, release, secrets
from src.deploy.errors import EXIT_FAILED, EXIT_MISSING, DeployError, MissingResource

log = logging.getLogger("src.deploy")

# CLI flag -> DeploySettings field (None = keep params.yaml's value).
OVERRIDES = ("region", "env", "app", "repository", "port", "smoke_url", "command_timeout", "smoke_timeout",
             "poll_interval", "http_timeout", "target_group_arn", "drain_timeout")


def _common_flags(top: bool) -> argparse.ArgumentParser:
    """Flags accepted before and after the command; a subcommand's copy must not reset what came before it."""
    common = argparse.ArgumentParser(add_help=False, argument_default=None if top else argparse.SUPPRESS)
    common.add_argument("--params", type=Path, help="params file (default: params.yaml)",
                        **({"default": Path(PARAMS_FILE)} if top else {}))
    common.add_argument("--region", help="AWS region (deploy.region)")
    common.add_argument("--env", help="environment: instances tagged Env=ENV (deploy.env)")
    common.add_argument("--app", help="application: instances tagged App=APP (deploy.app)")
    common.add_argument("--repository", help="ECR repository name (deploy.repository)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_flags(top=False)
    parser = argparse.ArgumentParser(prog="python -m src.deploy", parents=[_common_flags(top=True)],
                                     description="Ship the scoring service to AWS (ECR + EC2 via SSM).")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("ensure-registry", parents=[common], help="create or fix the ECR repository; print its URI")
    reg.add_argument("--name", dest="repository_name", help="repository name (default: deploy.repository)")
    rel = sub.add_parser("release", parents=[common], help="deploy TAG to every instance, smoke-test, roll back")
    rel.add_argument("tag", help="image tag in the ECR repository (the workflows use the git SHA)")
    rel.add_argument("--smoke-url", help="base URL to smoke-test (default: each instance's IP and deploy.port)")
    rel.add_argument("--port", type=int, help="host port of the service (deploy.port)")
    rel.add_argument("--command-timeout", type=float, help="seconds for the SSM command (deploy.command_timeout)")
    rel.add_argument("--smoke-timeout", type=float, help="seconds to wait for /ready (deploy.smoke_timeout)")
    rel.add_argument("--poll-interval", type=float, help="seconds between status polls (deploy.poll_interval)")
    rel.add_argument("--http-timeout", type=float, help="seconds per smoke request (deploy.http_timeout)")
    rel.add_argument("--target-group-arn", help="the load balancer's target group: each host leaves it while its "
                                                "container is replaced (deploy.target_group_arn)")
    rel.add_argument("--drain-timeout", type=float, help="seconds for a host to drain (deploy.drain_timeout)")
    sub.add_parser("status", parents=[common], help="current tag, last release and command, instances")
    sub.add_parser("config", parents=[common], help="effective deploy settings as key=value lines")
    sub.add_parser("champion", parents=[common], help="print version=<the champion's version> (empty: none yet)")
    pro = sub.add_parser("promoted", parents=[common],
                         help="print promoted=true|false (and the new champion) by asking the registry")
    pro.add_argument("--before", default="", help="the champion's version before dvc repro (empty: none)")
    sec = sub.add_parser("secrets", parents=[common], help="the service's secrets in SSM Parameter Store")
    what = sec.add_subparsers(dest="secrets_command", required=True)
    push = what.add_parser("push", parents=[common], help="upload the credentials file and/or a new SECRET_KEY")
    push.add_argument("--credentials", type=Path, help="the credentials file (python -m src.auth ...)")
    push.add_argument("--new-secret-key", action="store_true",
                      help="a fresh SECRET_KEY (web sessions end at the next release)")
    push.add_argument("--smoke-key", action="store_true",
                      help="$API_KEY (a score key) as the key each host smoke-tests its new container with")
    what.add_parser("sync", parents=[common], help="every instance fetches the credentials again (no restart)")
    what.add_parser("status", parents=[common], help="which secrets exist in SSM (values are not read)")
    return parser


def effective_settings(args: argparse.Namespace) -> DeploySettings:
    """params.yaml's deploy section with the CLI's overrides, validated by the same rules."""
    base = load_settings(args.params).deploy
    overrides = {key: getattr(args, key) for key in OVERRIDES if getattr(args, key, None) is not None}
    return deploy_settings({**base.model_dump(), **overrides}) if overrides else base


def _write(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def print_status(st: release.Status, cfg: DeploySettings) -> None:
    _write(f"environment   {st.env} (region {st.region}, instances tagged App={cfg.app}, Env={st.env})")
    _write(f"current tag   {st.current_tag or '-'}   ({cfg.parameter(release.CURRENT_TAG)})")
    last = st.last_release
    if last:
        _write(f"last release  {last.get('tag')} ({last.get('outcome')}; previous {last.get('previous') or '-'}) "
               f"at {last.get('at')} by {last.get('by')}")
        if last.get("reason"):
            _write(f"              {last['reason']}")
    else:
        _write("last release  -")
    cmd = st.last_command
    if cmd:
        _write(f"last command  {cmd.get('CommandId')} {cmd.get('Status')} ({cmd.get('Comment', '')}, "
               f"requested {cmd.get('RequestedDateTime')})")
    else:
        _write("last command  -")
    _write(f"instances     {len(st.instances)}")
    for inst in st.instances:
        _write(f"  {inst.id:<20} {inst.state:<10} public {inst.public_ip or '-':<15} "
               f"private {inst.private_ip or '-':<15} {inst.name or ''}".rstrip())


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command in ("champion", "promoted"):
        # MLflow only for the commands that ask the registry (1.2 s of imports the AWS commands do without)
        from src.deploy import champion  # noqa: PLC0415
        from src.modeling.registry import champion_version  # noqa: PLC0415

        settings = load_settings(args.params)
        now = champion_version(settings)
        if args.command == "champion":
            _write(f"version={now or ''}")
            return
        for key, value in champion.outputs(settings.registered_model_name, now, args.before or None).items():
            _write(f"{key}={value}")
        return
    cfg = effective_settings(args)
    if args.command == "config":
        settings = load_settings(args.params)
        for key in ("region", "env", "app", "repository", "port"):
            _write(f"{key}={getattr(cfg, key)}")
        _write(f"current_tag_parameter={cfg.parameter(release.CURRENT_TAG)}")
        _write(f"model_name={settings.registered_model_name}")
        _write(f"model_uri={settings.serve.model_uri or f'models:/{settings.registered_model_name}@champion'}")
        return
    aws = release.connect(cfg.region)
    if args.command == "ensure-registry":
        repo = ecr_ops.ensure_repository(aws.ecr, args.repository_name or cfg.repository)
        _write(repo.uri)
    elif args.command == "release":
        outcome = release.release(aws, cfg, args.tag)
        _write(f"released {outcome.tag} to {', '.join(outcome.instances)} (previous: {outcome.previous or '-'})")
    elif args.command == "status":
        print_status(release.status(aws, cfg), cfg)
    elif args.command == "secrets":
        run_secrets(args, aws, cfg)


def run_secrets(args: argparse.Namespace, aws: release.Aws, cfg: DeploySettings) -> None:
    if args.secrets_command == "push":
        if args.credentials is None and not args.new_secret_key and not args.smoke_key:
            raise MissingResource("nothing to push: give --credentials FILE, --new-secret-key and/or --smoke-key")
        smoke_key = env.text(env.API_KEY) if args.smoke_key else None
        if args.smoke_key and not smoke_key:
            raise MissingResource("--smoke-key pushes $API_KEY, which is not set: export API_KEY=<a score key>")
        for name in secrets.push(aws.ssm, cfg, args.credentials, args.new_secret_key, smoke_key):
            _write(f"wrote {name}")
    elif args.secrets_command == "sync":
        instances = fleet.require_instances(aws.ec2, cfg.app, cfg.env)
        lines = ["set -eu", *secrets.fetch_lines(cfg, cfg.region)]
        command_id = fleet.send_script(aws.ssm, instances, lines, "credit-default secrets sync", cfg.command_timeout)
        fleet.wait_for_command(aws.ssm, command_id, instances, cfg.command_timeout, cfg.poll_interval)
        _write(f"credentials refreshed on {', '.join(i.id for i in instances)}")
    else:
        for name, exists in secrets.present(aws.ssm, cfg).items():
            _write(f"{cfg.parameter(name)} {'present' if exists else 'MISSING'}")


def _aws_message(exc: ClientError | BotoCoreError) -> str:
    if isinstance(exc, ClientError):
        err: dict[str, Any] = exc.response.get("Error", {})
        return f"AWS {exc.operation_name} failed: {err.get('Code')}: {err.get('Message')}"
    return f"AWS: {exc}"


def run(argv: list[str] | None = None) -> None:
    """Entry point: logging, then every expected failure as one line with its exit code."""
    setup_logging()
    if logging.getLogger().level > logging.DEBUG:  # "found credentials / endpoint" on every client is noise
        for name in ("botocore", "boto3", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        main(argv)
    except DeployError as exc:
        log.error("%s", exc)
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_MISSING)
    except PipelineError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_FAILED)
    except (ClientError, BotoCoreError) as exc:
        log.error("%s", _aws_message(exc))
        sys.exit(EXIT_FAILED)
