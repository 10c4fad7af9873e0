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
  description = "Public IPv4 address of the first host."
  value       = aws_instance.app[0].public_ip
}

output "service_url" {
  description = "URL of the scoring service on the first host."
  value       = "http://${aws_instance.app[0].public_ip}:${var.app_port}/"
}

output "deploy_role_arn" {
  description = "IAM role for GitHub Actions (aws-actions/configure-aws-credentials role-to-assume)."
  value       = aws_iam_role.deploy.arn
}

output "aws_region" {
  description = "Region everything was created in."
  value       = local.region
}
