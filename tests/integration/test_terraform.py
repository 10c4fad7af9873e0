"""infra/terraform: the resources and settings issue #5 asks for, read from the .tf files, and a clean checkov scan.

No AWS account and no terraform binary are needed: python-hcl2 parses the files
(what the first tests assert), and checkov — installed by `make checkov` into its
own venv, as its pins conflict with dvc's — scans them the way CI would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from configparser import ConfigParser
from pathlib import Path
from typing import Any

import hcl2
import pytest

from src.server.worker import DEFAULT_KEEPALIVE
from tests.conftest import ROOT

TF_DIR = ROOT / "infra" / "terraform"
SSM_CORE = "AmazonSSMManagedInstanceCore"
ECR_PULL = {"ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
            "ecr:GetDownloadUrlForLayer"}
SKIP_COMMENT = re.compile(r"#\s*checkov:skip=(?P<id>[A-Z0-9_]+)(?::(?P<reason>.*))?$")


# ----------------------------------------------------------------------------- parsing

def _plain(value: Any) -> Any:
    """hcl2 output without its bookkeeping keys (__comments__, __is_block__...)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class Terraform:
    """Every top-level block of infra/terraform/*.tf, keyed the way Terraform addresses them."""

    def __init__(self, folder: Path) -> None:
        self.files = sorted(folder.glob("*.tf"))
        opts = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
        self.resources: dict[tuple[str, str], dict] = {}
        self.data: dict[tuple[str, str], dict] = {}
        self.variables: dict[str, dict] = {}
        self.outputs: dict[str, dict] = {}
        self.locals: dict[str, Any] = {}
        self.providers: list[dict] = []
        for path in self.files:
            with path.open(encoding="utf-8") as fh:
                doc = _plain(hcl2.load(fh, serialization_options=opts))
            for kind, store in (("resource", self.resources), ("data", self.data)):
                for block in doc.get(kind, []):
                    for rtype, named in block.items():
                        for name, body in named.items():
                            assert (rtype, name) not in store, f"{kind} {rtype}.{name} declared twice"
                            store[(rtype, name)] = body
            for block in doc.get("variable", []):
                self.variables.update(block)
            for block in doc.get("output", []):
                self.outputs.update(block)
            for block in doc.get("locals", []):
                self.locals.update(block)
            self.providers += doc.get("provider", [])

    def of_type(self, rtype: str) -> dict[str, dict]:
        return {name: body for (t, name), body in self.resources.items() if t == rtype}

    def one(self, rtype: str) -> tuple[str, dict]:
        found = self.of_type(rtype)
        assert len(found) == 1, f"expected one {rtype}, found {sorted(found)}"
        return next(iter(found.items()))

    def for_bucket(self, rtype: str, bucket: str) -> dict:
        """The single ``rtype`` resource configuring ``aws_s3_bucket.<bucket>``."""
        found = [b for b in self.of_type(rtype).values() if b.get("bucket") == f"${{aws_s3_bucket.{bucket}.id}}"]
        assert len(found) == 1, f"expected one {rtype} for aws_s3_bucket.{bucket}, found {len(found)}"
        return found[0]

    def policy_document(self, ref: str) -> list[dict]:
        """Statements of ``${data.aws_iam_policy_document.NAME.json}``."""
        match = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", ref)
        assert match, f"policy {ref!r} is not an aws_iam_policy_document (keep policies reviewable)"
        return self.data[("aws_iam_policy_document", match.group(1))]["statement"]


def block(body: dict, name: str) -> dict:
    """A nested block that must appear exactly once (hcl2 gives nested blocks as lists)."""
    value = body.get(name)
    assert isinstance(value, list) and len(value) == 1, f"expected one {name} block, got {value!r}"
    return value[0]


def actions_of(statements: list[dict]) -> set[str]:
    return {a for s in statements for a in s.get("actions", [])}


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return Terraform(TF_DIR)


# ----------------------------------------------------------------------------- S3, ECR

def test_files_and_outputs(tf: Terraform) -> None:
    assert {p.name for p in tf.files} >= {"main.tf", "variables.tf", "outputs.tf", "versions.tf"}
    assert (TF_DIR / "README.md").is_file()
    assert {"bucket_name", "ecr_repository_url", "instance_ids", "public_ip", "deploy_role_arn"} <= set(tf.outputs)
    for name, output in tf.outputs.items():
        assert output.get("description"), f"output {name} has no description"
    for name, variable in tf.variables.items():
        assert variable.get("description"), f"variable {name} has no description"
    readme = (TF_DIR / "README.md").read_text(encoding="utf-8")
    for name in [*tf.variables, *tf.outputs]:
        assert f"`{name}`" in readme, f"infra/terraform/README.md does not document {name}"


def test_artifact_bucket_is_versioned_encrypted_and_private(tf: Terraform) -> None:
    name, _bucket = tf.one("aws_s3_bucket")
    assert block(tf.for_bucket("aws_s3_bucket_versioning", name), "versioning_configuration")["status"] == "Enabled"

    sse = block(block(tf.for_bucket("aws_s3_bucket_server_side_encryption_configuration", name), "rule"),
                "apply_server_side_encryption_by_default")
    assert sse["sse_algorithm"] == "aws:kms"
    key_ref = sse["kms_master_key_id"]
    key_name = re.fullmatch(r"\$\{aws_kms_key\.(\w+)\.arn\}", key_ref).group(1)
    assert tf.resources[("aws_kms_key", key_name)]["enable_key_rotation"] is True

    pab = tf.for_bucket("aws_s3_bucket_public_access_block", name)
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        assert pab[flag] is True, flag

    rules = tf.for_bucket("aws_s3_bucket_lifecycle_configuration", name)["rule"]
    assert any("abort_incomplete_multipart_upload" in r for r in rules)
    ownership = block(tf.for_bucket("aws_s3_bucket_ownership_controls", name), "rule")
    assert ownership["object_ownership"] == "BucketOwnerEnforced"


def test_dvc_s3_remote_points_at_the_terraform_bucket(tf: Terraform) -> None:
    config = ConfigParser()
    config.read(ROOT / ".dvc" / "config", encoding="utf-8")
    url = config['\'remote "s3"\'']["url"]
    assert url == f"s3://{tf.variables['bucket_name']['default']}/dvcstore"
    assert tf.outputs["dvc_remote_url"]["value"] == "s3://${aws_s3_bucket.artifacts.bucket}/dvcstore"


def test_ecr_repository_scans_on_push_with_immutable_tags(tf: Terraform) -> None:
    _name, repo = tf.one("aws_ecr_repository")
    assert repo["image_tag_mutability"] == "IMMUTABLE"
    assert block(repo, "image_scanning_configuration")["scan_on_push"] is True
    assert block(repo, "encryption_configuration")["encryption_type"] == "KMS"
    # The deploy code (params.yaml deploy.repository) pushes to this repository.
    assert tf.variables["ecr_repository_name"]["default"] == "credit-default"


# ----------------------------------------------------------------------------- EC2

def test_hosts_admit_only_the_load_balancer_which_admits_only_the_allowed_networks(tf: Terraform) -> None:
    groups = tf.of_type("aws_security_group")
    assert set(groups) == {"app", "alb"}
    app, alb = groups["app"], groups["alb"]
    assert len(app["ingress"]) == 1, app["ingress"]
    rule = app["ingress"][0]
    assert rule["from_port"] == rule["to_port"] == "${var.app_port}" and rule["protocol"] == "tcp"
    assert rule["security_groups"] == ["${aws_security_group.alb.id}"] and "cidr_blocks" not in rule
    assert tf.variables["app_port"]["default"] == 8000
    for egress in app["egress"]:
        assert egress["protocol"] == "tcp" and egress["from_port"] == egress["to_port"] == 443, egress
    assert sorted(r["from_port"] for r in alb["ingress"]) == [80, 443]
    assert all(r["cidr_blocks"] == "${var.allowed_cidrs}" for r in alb["ingress"])
    assert [(e["from_port"], e["cidr_blocks"]) for e in alb["egress"]] == [
        ("${var.app_port}", ["${data.aws_vpc.selected.cidr_block}"])]
    assert tf.variables["allowed_cidrs"]["type"] == "${list(string)}"
    assert "default" not in tf.variables["allowed_cidrs"], "who may call the service is a deliberate choice"
    # No rules hiding in separate resources.
    for rtype in ("aws_security_group_rule", "aws_vpc_security_group_ingress_rule",
                  "aws_vpc_security_group_egress_rule"):
        assert not tf.of_type(rtype), rtype


def test_load_balancer_https_health_checks_ready_and_fronts_every_host(tf: Terraform) -> None:
    _name, lb = tf.one("aws_lb")
    assert lb["load_balancer_type"] == "application" and lb["internal"] is False
    assert lb["drop_invalid_header_fields"] is True
    # The service keeps an idle connection longer than the balancer does, so only the balancer closes idle
    # ones; the other way round it may send a request on a connection the service is closing (a 502).
    assert 0 < lb["idle_timeout"] < DEFAULT_KEEPALIVE
    assert lb["security_groups"] == ["${aws_security_group.alb.id}"]
    assert tf.variables["alb_deletion_protection"]["default"] is True
    _name, group = tf.one("aws_lb_target_group")
    assert group["port"] == "${var.app_port}" and group["target_type"] == "instance"
    check = block(group, "health_check")
    assert check["path"] == "/ready" and check["matcher"] == "200"
    assert 0 < group["deregistration_delay"] <= 60
    sticky = block(group, "stickiness")  # the upload page's jobs live on one host: a browser stays with it
    assert sticky["enabled"] is True and sticky["type"] == "lb_cookie" and sticky["cookie_duration"] >= 3600
    _name, attach = tf.one("aws_lb_target_group_attachment")
    assert attach["count"] == "${var.instance_count}"
    assert attach["target_id"] == "${aws_instance.app[count.index].id}"
    listeners = tf.of_type("aws_lb_listener")
    https, http = listeners["https"], listeners["http"]
    assert (https["port"], https["protocol"], https["certificate_arn"]) == (443, "HTTPS", "${var.certificate_arn}")
    assert "TLS13" in https["ssl_policy"]
    assert block(https, "default_action")["type"] == "forward"
    redirect = block(http, "default_action")
    assert redirect["type"] == "redirect" and block(redirect, "redirect")["protocol"] == "HTTPS"
    assert "default" not in tf.variables["certificate_arn"]
    assert {"target_group_arn", "load_balancer_dns_name", "service_url"} <= set(tf.outputs)
    assert "aws_lb.app.dns_name" in tf.outputs["service_url"]["value"]


def test_instance_hardening_and_tags(tf: Terraform) -> None:
    _name, inst = tf.one("aws_instance")
    meta = block(inst, "metadata_options")
    assert meta["http_tokens"] == "required"  # IMDSv2 only
    assert meta["http_endpoint"] == "enabled"
    assert block(inst, "root_block_device")["encrypted"] is True
    assert inst["monitoring"] is True
    assert inst["ebs_optimized"] is True
    assert inst["vpc_security_group_ids"] == ["${aws_security_group.app.id}"]

    ami = tf.data[("aws_ssm_parameter", "al2023_ami")]["name"]
    assert ami.startswith("/aws/service/ami-amazon-linux-latest/al2023-ami-")
    assert "data.aws_ssm_parameter.al2023_ami.value" in inst["ami"]

    # The deploy code finds hosts by App=credit-default and Env=<env> (params.yaml deploy.app / deploy.env).
    assert tf.locals["tags"]["App"] == "credit-default"
    assert tf.locals["tags"]["Env"] == "${var.env}"
    assert inst["tags"].startswith("${merge(local.tags,"), inst["tags"]
    assert tf.variables["env"]["default"] == "production"

    user_data = (TF_DIR / "user_data.sh.tftpl").read_text(encoding="utf-8")
    assert "user_data.sh.tftpl" in inst["user_data"]
    assert re.search(r"dnf install -y docker\b", user_data)
    assert "systemctl enable --now docker" in user_data
    assert "systemctl enable --now amazon-ssm-agent" in user_data
    # Every ${...} in the template is a variable templatefile() passes (others would fail at plan time).
    passed = set(re.findall(r"(\w+)\s*=", inst["user_data"].split(".tftpl", 1)[1]))
    assert set(re.findall(r"(?<!\$)\$\{(\w+)\}", user_data)) <= passed


def test_instance_role_can_only_pull_the_image_read_its_secrets_and_talk_to_ssm(tf: Terraform) -> None:
    _name, inst = tf.one("aws_instance")
    profile_name = re.fullmatch(r"\$\{aws_iam_instance_profile\.(\w+)\.name\}", inst["iam_instance_profile"]).group(1)
    role_ref = tf.resources[("aws_iam_instance_profile", profile_name)]["role"]
    role = re.fullmatch(r"\$\{aws_iam_role\.(\w+)\.name\}", role_ref).group(1)

    trust = tf.policy_document(tf.resources[("aws_iam_role", role)]["assume_role_policy"])
    assert actions_of(trust) == {"sts:AssumeRole"}
    assert [p["identifiers"] for s in trust for p in s["principals"]] == [["ec2.amazonaws.com"]]

    managed = [a["policy_arn"] for a in tf.of_type("aws_iam_role_policy_attachment").values()
               if a["role"] in (f"${{aws_iam_role.{role}.name}}", f"${{aws_iam_role.{role}.id}}")]
    assert len(managed) == 1 and managed[0].endswith(f":iam::aws:policy/{SSM_CORE}"), managed
    assert "managed_policy_arns" not in tf.resources[("aws_iam_role", role)]

    inline = [p for p in tf.of_type("aws_iam_role_policy").values()
              if p["role"] in (f"${{aws_iam_role.{role}.name}}", f"${{aws_iam_role.{role}.id}}")]
    assert len(inline) == 1
    statements = tf.policy_document(inline[0]["policy"])
    assert actions_of(statements) == ECR_PULL | {"ssm:GetParameter"}
    for statement in statements:
        assert statement.get("effect", "Allow") == "Allow"
        if statement["actions"] == ["ssm:GetParameter"]:  # the service's three secrets, nothing else
            names = sorted(r.rsplit("/", 1)[1] for r in statement["resources"])
            assert names == ["credentials", "secret-key", "smoke-key"]
            assert all("parameter/credit-default/${var.env}/" in r for r in statement["resources"]), statement
        elif statement["actions"] != ["ecr:GetAuthorizationToken"]:  # the only ECR call with no resource
            assert statement["resources"] == ["${aws_ecr_repository.app.arn}"], statement


# ----------------------------------------------------------------------------- GitHub deploy role

def test_github_oidc_deploy_role(tf: Terraform) -> None:
    role = tf.resources[("aws_iam_role", "deploy")]
    trust = tf.policy_document(role["assume_role_policy"])
    assert actions_of(trust) == {"sts:AssumeRoleWithWebIdentity"}
    principal = block(trust[0], "principals")
    assert principal["type"] == "Federated"
    conditions = {c["variable"]: c for c in trust[0]["condition"]}
    assert conditions["token.actions.githubusercontent.com:aud"]["values"] == ["sts.amazonaws.com"]
    sub = conditions["token.actions.githubusercontent.com:sub"]
    assert "repo:${var.github_repository}:" in str(sub["values"]) and "*" not in str(sub["values"])
    provider = tf.resources[("aws_iam_openid_connect_provider", "github")]
    assert provider["url"] == "https://token.actions.githubusercontent.com"

    statements = tf.policy_document(tf.resources[("aws_iam_role_policy", "deploy")]["policy"])
    by_sid = {s["sid"]: s for s in statements}
    assert all(s.get("effect", "Allow") == "Allow" and "*" not in str(s["actions"]) for s in statements)
    assert {"ecr:PutImage", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload",
            "ecr:BatchCheckLayerAvailability"} <= set(by_sid["EcrPushServiceImage"]["actions"])
    assert by_sid["EcrPushServiceImage"]["resources"] == ["${aws_ecr_repository.app.arn}"]

    send = by_sid["RunCommandOnServiceHosts"]
    assert send["actions"] == ["ssm:SendCommand"] and send["resources"][0].endswith(":instance/*")
    tag_conditions = {c["variable"]: c["values"] for c in send["condition"]}
    assert tag_conditions == {"ssm:resourceTag/App": ["${local.tags.App}"], "ssm:resourceTag/Env": ["${var.env}"]}
    assert by_sid["RunShellScriptDocumentOnly"]["resources"][0].endswith("::document/AWS-RunShellScript")

    params = by_sid["DeployParameters"]
    assert {"ssm:GetParameter", "ssm:PutParameter"} <= set(params["actions"])
    assert params["resources"][0].endswith(":parameter/credit-default/*")

    # the rolling release moves hosts out of and back into the balancer's own target group, no other
    roll = by_sid["RollHostsThroughTheBalancer"]
    assert sorted(roll["actions"]) == ["elasticloadbalancing:DeregisterTargets", "elasticloadbalancing:RegisterTargets"]
    assert roll["resources"] == ["${aws_lb_target_group.app.arn}"]

    wildcard = {a for s in statements if s["resources"] == ["*"] for a in s["actions"]}
    # Only calls IAM cannot scope to a resource may use "*".
    assert wildcard <= {"ecr:GetAuthorizationToken", "ec2:DescribeInstances", "ssm:DescribeInstanceInformation",
                        "ssm:GetCommandInvocation", "ssm:ListCommandInvocations", "ssm:ListCommands",
                        "elasticloadbalancing:DescribeTargetHealth"}, wildcard
    assert "elasticloadbalancing:DescribeTargetHealth" in wildcard  # (Describe* takes no resource in IAM)
    assert "ec2:DescribeInstances" in wildcard
    bucket_resources = {r for s in statements if any(a.startswith("s3:") for a in s["actions"]) for r in s["resources"]}
    assert bucket_resources == {"${aws_s3_bucket.artifacts.arn}", "${aws_s3_bucket.artifacts.arn}/*"}


# ----------------------------------------------------------------------------- checkov

def skip_comments() -> Iterator[tuple[str, int, str, str]]:
    """(file, line, check id, reason) of every checkov skip in the Terraform files."""
    for path in sorted(TF_DIR.glob("*.tf")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "checkov:skip" in line:
                match = SKIP_COMMENT.search(line.strip())
                assert match, f"{path.name}:{number}: malformed checkov skip {line.strip()!r}"
                yield path.name, number, match.group("id"), (match.group("reason") or "").strip()


def test_every_checkov_skip_is_inline_with_a_reason() -> None:
    skips = list(skip_comments())
    for name, number, check, reason in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", check), f"{name}:{number}: {check} is not a checkov AWS check id"
        assert len(reason) >= 20, f"{name}:{number}: skip of {check} needs a written reason, got {reason!r}"
    # No file- or run-wide suppressions either: skips live next to the resource they excuse.
    assert not list(TF_DIR.glob(".checkov*")) and not (ROOT / ".checkov.yaml").exists()


def checkov_bin() -> Path:
    path = Path(os.environ.get("CHECKOV_BIN") or ROOT / ".tools" / "checkov" / "bin" / "checkov")
    if not path.exists():
        pytest.fail(f"checkov is not installed at {path}: run `make checkov` (installs it into .tools/checkov; "
                    "its pins conflict with dvc's, so it is not in the Pipfile), or set CHECKOV_BIN", pytrace=False)
    return path


def test_checkov_finds_nothing() -> None:
    proc = subprocess.run(
        [str(checkov_bin()), "-d", str(TF_DIR), "--framework", "terraform", "--compact", "--quiet", "-o", "json",
         "--skip-download"],  # offline: no Prisma Cloud look-ups
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"})
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    assert [r["check_type"] for r in reports] == ["terraform"], proc.stdout[:2000]
    summary = reports[0]["summary"]
    failed = [f"{f['check_id']} {f['resource']} ({f['file_path']}:{f['file_line_range']}): {f['check_name']}"
              for f in reports[0]["results"].get("failed_checks", [])]
    assert not failed and summary["failed"] == 0, "checkov failures:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0, summary
    assert summary["resource_count"] >= 15 and summary["passed"] >= 50, summary
    assert proc.returncode == 0
    # Every skip checkov applied is one of the commented ones.
    assert summary["skipped"] == len(list(skip_comments())), summary
