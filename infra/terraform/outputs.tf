output "bucket_name" {
  description = "S3 bucket holding the DVC remote and the MLflow artifacts."
  value       = aws_s3_bucket.artifacts.bucket
}

output "dvc_remote_url" {
  description = "URL for the project's `s3` DVC remote: dvc remote modify --local s3 url <this>."
  value       = "s3://${aws_s3_bucket.artifacts.bucket}/dvcstore"
}

output "mlflow_artifacts_uri" {
  description = "Artifact destination for an MLflow server: mlflow server --artifacts-destination <this>."
  value       = "s3://${aws_s3_bucket.artifacts.bucket}/mlflow"
}

output "kms_key_arn" {
  description = "KMS key encrypting the bucket, the ECR images and the root volumes."
  value       = aws_kms_key.main.arn
}

output "ecr_repository_url" {
  description = "ECR repository URL of the service image (docker push <this>:<git sha>)."
  value       = aws_ecr_repository.app.repository_url
}

output "instance_ids" {
  description = "EC2 instance ids of the scoring service hosts (tagged App=credit-default, Env=<env>)."
  value       = aws_instance.app[*].id
}

output "public_ips" {
  description = "Public IPv4 addresses of the hosts."
  value       = aws_instance.app[*].public_ip
}

output "public_ip" {
  description = "Public IPv4 address of the first host (outbound only: inbound traffic comes through the load balancer)."
  value       = aws_instance.app[0].public_ip
}

output "service_url" {
  description = "URL of the scoring service: the load balancer (point a DNS name of the certificate at load_balancer_dns_name)."
  value       = "https://${aws_lb.app.dns_name}/"
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer (an alias or CNAME record of the certificate's domain points here)."
  value       = aws_lb.app.dns_name
}

output "target_group_arn" {
  description = "Target group of the hosts: params.yaml deploy.target_group_arn (a release takes one host out at a time)."
  value       = aws_lb_target_group.app.arn
}

output "deploy_role_arn" {
  description = "IAM role for GitHub Actions (aws-actions/configure-aws-credentials role-to-assume)."
  value       = aws_iam_role.deploy.arn
}

output "aws_region" {
  description = "Region everything was created in."
  value       = local.region
}
