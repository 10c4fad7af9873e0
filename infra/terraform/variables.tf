variable "region" {
  description = "AWS region for every resource."
  type        = string
  default     = "us-east-1"
}

variable "env" {
  description = "Environment name. Becomes the Env tag the deploy code selects instances by."
  type        = string
  default     = "production"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,15}$", var.env))
    error_message = "env must be 2-16 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "bucket_name" {
  description = "S3 bucket for the DVC remote (prefix dvcstore/) and MLflow artifacts (prefix mlflow/). Bucket names are global: override it if the default is taken, then point DVC at `terraform output dvc_remote_url`."
  type        = string
  default     = "credit-default-dvc"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots, dashes)."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept in the bucket before it expires."
  type        = number
  default     = 90
}

variable "ecr_repository_name" {
  description = "ECR repository for the scoring service image."
  type        = string
  default     = "credit-default"
}

variable "ecr_keep_images" {
  description = "Tagged images kept in ECR; older ones expire (untagged ones after 7 days)."
  type        = number
  default     = 30
}

variable "instance_type" {
  description = "EC2 instance type of the scoring service host (EBS-optimized types only)."
  type        = string
  default     = "t3.small"
}

variable "instance_count" {
  description = "Number of scoring service hosts."
  type        = number
  default     = 1

  validation {
    condition     = var.instance_count >= 1 && var.instance_count <= 10
    error_message = "instance_count must be between 1 and 10."
  }
}

variable "architecture" {
  description = "CPU architecture of the Amazon Linux 2023 AMI: x86_64 or arm64 (must match instance_type and the image)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "root_volume_size" {
  description = "Root volume size in GiB (gp3, encrypted with the project KMS key)."
  type        = number
  default     = 30
}

variable "vpc_id" {
  description = "VPC for the instance and its security group; null uses the region's default VPC."
  type        = string
  default     = null
}

variable "subnet_id" {
  description = "Public subnet for every instance; null spreads them over the VPC's subnets in zones that offer instance_type."
  type        = string
  default     = null
}

variable "app_port" {
  description = "TCP port the scoring service (gunicorn in the container) listens on; the only inbound port."
  type        = number
  default     = 8000

  validation {
    condition     = var.app_port > 0 && var.app_port < 65536
    error_message = "app_port must be a TCP port number."
  }
}

variable "allowed_cidrs" {
  description = "IPv4 CIDR blocks allowed to reach the load balancer (HTTPS 443; HTTP 80 redirects). No default: choose who may call the service."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidrs) > 0 && alltrue([for c in var.allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "allowed_cidrs must be a non-empty list of IPv4 CIDR blocks."
  }
}

variable "github_repository" {
  description = "GitHub repository (owner/name) whose Actions workflows may assume the deploy role."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must look like owner/name."
  }
}

variable "github_oidc_subjects" {
  description = "What in github_repository may assume the deploy role: suffixes of the OIDC sub claim after repo:<owner/name>: (e.g. ref:refs/heads/main, environment:production)."
  type        = list(string)
  default     = ["ref:refs/heads/main"]

  validation {
    condition     = length(var.github_oidc_subjects) > 0 && alltrue([for s in var.github_oidc_subjects : s != "*" && s != ""])
    error_message = "github_oidc_subjects must name specific refs or environments, not *."
  }
}

variable "create_github_oidc_provider" {
  description = "Create the account's GitHub OIDC identity provider; false reuses the one that already exists (one per account)."
  type        = bool
  default     = true
}

variable "certificate_arn" {
  description = "ACM certificate ARN for the load balancer's HTTPS listener (its domain is the service's name)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN (arn:aws:acm:...)."
  }
}

variable "alb_subnet_ids" {
  description = "Public subnets (two zones or more) for the load balancer; null uses the VPC's subnets in zones that offer instance_type."
  type        = list(string)
  default     = null
}

variable "alb_deletion_protection" {
  description = "Protect the load balancer from deletion (turn off before terraform destroy)."
  type        = bool
  default     = true
}
