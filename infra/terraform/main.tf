# Credit-default scoring on AWS: one S3 bucket (DVC remote + MLflow artifacts),
# one ECR repository (the service image), EC2 host(s) running that image, and a
# GitHub Actions OIDC role that builds, pushes and deploys. See README.md here.

locals {
  name = "credit-default-${var.env}"

  # The deploy code finds its instances by App and Env: keep these two as they are.
  tags = {
    App       = "credit-default"
    Env       = var.env
    ManagedBy = "terraform"
  }

  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  # Hosts spread over the zones (one zone down leaves the others serving); the balancer spans them all.
  instance_subnets = var.subnet_id != null ? [var.subnet_id] : sort(data.aws_subnets.selected.ids)
  alb_subnets      = var.alb_subnet_ids != null ? var.alb_subnet_ids : sort(data.aws_subnets.selected.ids)

  github_oidc_provider_arn = var.create_github_oidc_provider ? aws_iam_openid_connect_provider.github[0].arn : data.aws_iam_openid_connect_provider.github[0].arn
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_vpc" "selected" {
  id      = var.vpc_id
  default = var.vpc_id == null
}

# Not every zone offers every instance type (us-east-1e has no t3): pick a subnet
# in a zone that does.
data "aws_ec2_instance_type_offerings" "app" {
  location_type = "availability-zone"

  filter {
    name   = "instance-type"
    values = [var.instance_type]
  }
}

data "aws_subnets" "selected" {
  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.selected.id]
  }

  filter {
    name   = "availability-zone"
    values = data.aws_ec2_instance_type_offerings.app.locations
  }
}

# ---------------------------------------------------------------------------
# Encryption key for the bucket, the image repository and the root volumes
# ---------------------------------------------------------------------------

resource "aws_kms_key" "main" {
  description             = "credit-default ${var.env}: S3 artifacts, ECR images, EBS root volumes"
  enable_key_rotation     = true
  deletion_window_in_days = 30

  # Key administration and use stay with the account's IAM policies (the usual
  # default key policy, written out so it is reviewed with the rest).
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountIamPolicies"
      Effect    = "Allow"
      Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
}

resource "aws_kms_alias" "main" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.main.key_id
}

# ---------------------------------------------------------------------------
# S3: DVC remote (s3://<bucket>/dvcstore) and MLflow artifacts (s3://<bucket>/mlflow)
# ---------------------------------------------------------------------------

resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_18:Access logging needs a second, log-only bucket; CloudTrail data events are the audit trail when needed
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage for data that dvc repro and the MLflow registry can rebuild; versioning covers accidental deletes
  #checkov:skip=CKV2_AWS_62:Nothing consumes object events: DVC and MLflow read the bucket directly
  bucket = var.bucket_name
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "expire-old-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.artifacts]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.artifacts.arn, "${aws_s3_bucket.artifacts.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.artifacts]
}

# ---------------------------------------------------------------------------
# ECR: the scoring service image
# ---------------------------------------------------------------------------

resource "aws_ecr_repository" "app" {
  name                 = var.ecr_repository_name
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.main.arn
  }
}

resource "aws_ecr_lifecycle_policy" "app" {
  repository = aws_ecr_repository.app.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Drop untagged layers after 7 days"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 7
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the newest ${var.ecr_keep_images} images"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.ecr_keep_images
        }
        action = { type = "expire" }
      },
    ]
  })
}

# ---------------------------------------------------------------------------
# EC2: the scoring service host(s)
# ---------------------------------------------------------------------------

data "aws_ssm_parameter" "al2023_ami" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.architecture}"
}

resource "aws_security_group" "app" {
  name_prefix = "${local.name}-app-"
  description = "credit-default scoring service: app port from the load balancer, HTTPS out"
  vpc_id      = data.aws_vpc.selected.id

  ingress {
    description     = "Scoring service (web form and JSON API) from the load balancer only"
    from_port       = var.app_port
    to_port         = var.app_port
    protocol        = "tcp"
    security_groups = [aws_security_group.alb.id]
  }

  # Everything the host calls is HTTPS: ECR and its S3 layers, SSM, the OS
  # package repositories. DNS and NTP go to the VPC resolver and the Amazon
  # Time Sync Service, which security groups do not filter.
  egress {
    description = "HTTPS to AWS APIs (ECR, S3, SSM) and the Amazon Linux repositories"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  lifecycle {
    create_before_destroy = true
  }
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    sid     = "Ec2AssumesInstanceRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name               = "${local.name}-instance"
  description        = "credit-default hosts: pull the service image, be managed by SSM"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

# SSM: the deploy workflow runs its commands on the host through Run Command;
# no SSH port, no key pair.
resource "aws_iam_role_policy_attachment" "instance_ssm" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_iam_policy_document" "instance_ecr_pull" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "EcrPullServiceImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [aws_ecr_repository.app.arn]
  }

  # The service's secrets (python -m src.deploy secrets push): the hashed credentials file, the
  # session-signing key and the key the host smoke-tests a new container with, SecureStrings under the
  # aws/ssm key, read by the release script on the host.
  statement {
    sid     = "ReadServiceSecrets"
    actions = ["ssm:GetParameter"]
    resources = [
      "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter/credit-default/${var.env}/credentials",
      "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter/credit-default/${var.env}/secret-key",
      "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter/credit-default/${var.env}/smoke-key",
    ]
  }
}

resource "aws_iam_role_policy" "instance_ecr_pull" {
  name   = "ecr-pull"
  role   = aws_iam_role.instance.id
  policy = data.aws_iam_policy_document.instance_ecr_pull.json
}

resource "aws_iam_instance_profile" "instance" {
  name = "${local.name}-instance"
  role = aws_iam_role.instance.name
}

resource "aws_instance" "app" {
  #checkov:skip=CKV_AWS_88:A public IP for outbound HTTPS (ECR, SSM) in a VPC without NAT; inbound only from the load balancer's security group
  count = var.instance_count

  ami                         = nonsensitive(data.aws_ssm_parameter.al2023_ami.value)
  instance_type               = var.instance_type
  subnet_id                   = local.instance_subnets[count.index % length(local.instance_subnets)]
  vpc_security_group_ids      = [aws_security_group.app.id]
  iam_instance_profile        = aws_iam_instance_profile.instance.name
  associate_public_ip_address = true
  monitoring                  = true
  ebs_optimized               = true

  user_data = templatefile("${path.module}/user_data.sh.tftpl", {
    app = local.tags.App
  })

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    kms_key_id            = aws_kms_key.main.arn
    delete_on_termination = true
  }

  tags = merge(local.tags, {
    Name = "${local.name}-${count.index}"
  })

  volume_tags = local.tags

  lifecycle {
    # A newer AMI or a changed user_data should not silently replace a running host.
    ignore_changes = [ami, user_data]
  }
}

# ---------------------------------------------------------------------------
# GitHub Actions OIDC: the deploy role
# ---------------------------------------------------------------------------

resource "aws_iam_openid_connect_provider" "github" {
  count = var.create_github_oidc_provider ? 1 : 0

  url             = "https://token.actions.githubusercontent.com"
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = ["6938fd4d98bab03faadb97b34396831e3780aea1", "1c58a3a8518e8759bf075b76b750d4f2df264fcd"]
}

data "aws_iam_openid_connect_provider" "github" {
  count = var.create_github_oidc_provider ? 0 : 1

  url = "https://token.actions.githubusercontent.com"
}

data "aws_iam_policy_document" "github_assume" {
  statement {
    sid     = "GithubActionsOidc"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.github_oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = [for s in var.github_oidc_subjects : "repo:${var.github_repository}:${s}"]
    }
  }
}

resource "aws_iam_role" "deploy" {
  name                 = "${local.name}-deploy"
  description          = "GitHub Actions (${var.github_repository}): push the image to ECR, deploy it to the hosts through SSM"
  assume_role_policy   = data.aws_iam_policy_document.github_assume.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "deploy" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "EcrPushServiceImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImages",
      "ecr:DescribeRepositories",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:ListImages",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [aws_ecr_repository.app.arn]
  }

  statement {
    sid       = "RunCommandOnServiceHosts"
    actions   = ["ssm:SendCommand"]
    resources = ["arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"]

    condition {
      test     = "StringEquals"
      variable = "ssm:resourceTag/App"
      values   = [local.tags.App]
    }

    condition {
      test     = "StringEquals"
      variable = "ssm:resourceTag/Env"
      values   = [var.env]
    }
  }

  statement {
    sid       = "RunShellScriptDocumentOnly"
    actions   = ["ssm:SendCommand"]
    resources = ["arn:${local.partition}:ssm:${local.region}::document/AWS-RunShellScript"]
  }

  # These read-only calls have no resource-level permissions in IAM.
  statement {
    sid = "FindHostsAndReadCommandResults"
    actions = [
      "ec2:DescribeInstances",
      "elasticloadbalancing:DescribeTargetHealth",
      "ssm:DescribeInstanceInformation",
      "ssm:GetCommandInvocation",
      "ssm:ListCommandInvocations",
      "ssm:ListCommands",
    ]
    resources = ["*"]
  }

  # The rolling release (python -m src.deploy release --target-group-arn) takes one host at a time out
  # of the load balancer's target group and puts it back once its new container passed its smoke test.
  statement {
    sid       = "RollHostsThroughTheBalancer"
    actions   = ["elasticloadbalancing:DeregisterTargets", "elasticloadbalancing:RegisterTargets"]
    resources = [aws_lb_target_group.app.arn]
  }

  statement {
    sid = "DeployParameters"
    actions = [
      "ssm:GetParameter",
      "ssm:GetParameters",
      "ssm:PutParameter",
    ]
    resources = ["arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter/credit-default/*"]
  }

  statement {
    sid       = "ArtifactBucketList"
    actions   = ["s3:GetBucketLocation", "s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]
  }

  statement {
    sid       = "ArtifactBucketObjects"
    actions   = ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]
  }

  statement {
    sid       = "ArtifactBucketKey"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "deploy" {
  name   = "deploy"
  role   = aws_iam_role.deploy.id
  policy = data.aws_iam_policy_document.deploy.json
}

# ---------------------------------------------------------------------------
# Application Load Balancer: HTTPS in front of the hosts, health check /ready
# ---------------------------------------------------------------------------
# A release (python -m src.deploy release) takes one host at a time out of the
# target group, replaces its container, and waits for the health check before
# the next: the service never goes down as a whole.

resource "aws_security_group" "alb" {
  #checkov:skip=CKV_AWS_260:Port 80 only answers with a redirect to HTTPS, and only to allowed_cidrs (the operator's choice)
  name_prefix = "${local.name}-alb-"
  description = "credit-default load balancer: HTTPS (and HTTP, redirected) from the allowed networks"
  vpc_id      = data.aws_vpc.selected.id

  ingress {
    description = "HTTPS from the allowed networks"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }

  ingress {
    description = "HTTP from the allowed networks, answered with a redirect to HTTPS"
    from_port   = 80
    to_port     = 80
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }

  egress {
    description = "To the hosts' app port inside the VPC"
    from_port   = var.app_port
    to_port     = var.app_port
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.selected.cidr_block]
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb" "app" {
  #checkov:skip=CKV_AWS_91:Access logs need a bucket policy for the regional ELB account; every decision is already logged by the service (prediction log) and every request by gunicorn
  #checkov:skip=CKV2_AWS_28:No WAF by default: the service checks API keys, scopes and rate limits itself; attach a web ACL where policy asks for one
  #checkov:skip=CKV2_AWS_76:No WAF by default (see CKV2_AWS_28)
  name                       = local.name
  internal                   = false
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.alb.id]
  subnets                    = local.alb_subnets
  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection
  idle_timeout               = 60

  tags = local.tags
}

resource "aws_lb_target_group" "app" {
  #checkov:skip=CKV_AWS_378:TLS ends at the balancer; behind it the hosts admit only the balancer's security group, inside the VPC
  name                 = local.name
  port                 = var.app_port
  protocol             = "HTTP"
  vpc_id               = data.aws_vpc.selected.id
  target_type          = "instance"
  deregistration_delay = 30 # in-flight requests finish (gunicorn's graceful stop is 30 s too)

  # The batch upload page keeps each job's files on the host that scores it: a browser stays with
  # one host for a day (the API's clients send no cookie and are spread as before).
  stickiness {
    type            = "lb_cookie"
    cookie_duration = 86400
    enabled         = true
  }

  health_check {
    path                = "/ready" # 200 once the model is loaded; no key needed
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = local.tags
}

resource "aws_lb_target_group_attachment" "app" {
  count = var.instance_count

  target_group_arn = aws_lb_target_group.app.arn
  target_id        = aws_instance.app[count.index].id
  port             = var.app_port
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.app.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.app.arn
  }
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.app.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}
