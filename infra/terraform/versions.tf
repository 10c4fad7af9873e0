terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.70"
    }
  }

  # State stays local unless you add a backend, e.g. in a backend.tf (not committed):
  #   terraform { backend "s3" { bucket = "...", key = "credit-default/terraform.tfstate", region = "..." } }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}
