//! Building the AWS SDK configuration once per cold start. The endpoint comes
//! from the standard chain, so `AWS_ENDPOINT_URL` points every client at a
//! local emulator, LocalStack or (unset) real AWS.

use aws_config::{BehaviorVersion, SdkConfig};

/// Loads the shared SDK configuration (region, credentials, endpoint).
pub async fn load() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}
