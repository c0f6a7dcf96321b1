//! DynamoDB failures as [`StoreError`]s, classified by what the caller does
//! next, and the conditional-failure checks the writes rely on.

use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};

use crate::ports::StoreError;

/// The store kept refusing part of a request (a unique key changing hands
/// under a create, throttled batch items): try again.
#[derive(Debug, thiserror::Error)]
#[error("{0}; try again")]
pub(super) struct Busy(pub(super) String);

/// Error codes DynamoDB answers for a request it will never accept as sent
/// (an item over 400 KB, a key too long, a bad start key): the input must change.
const INPUT_ERROR_CODES: [&str; 2] = ["ValidationException", "SerializationException"];

/// Error codes of a call that cannot succeed as deployed (no such table or
/// index, a role without the permission, credentials DynamoDB does not know):
/// no retry helps, and the input is not at fault. Every other code (throttling,
/// `InternalServerError`, `ServiceUnavailable`, transaction conflicts, codes
/// not known here) is taken as transient, as all were before they were told apart.
const PERMANENT_ERROR_CODES: [&str; 6] = [
    "ResourceNotFoundException",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "MissingAuthenticationTokenException",
    "IncompleteSignatureException",
    "InvalidSignatureException",
];

/// A failure the adapter turns into a [`StoreError`].
pub(super) trait Classify {
    fn classify(self) -> StoreError;
}

impl<E, R> Classify for SdkError<E, R>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    fn classify(self) -> StoreError {
        let wrap: fn(_) -> StoreError = match &self {
            // The SDK could not build the request from what this code gave it: a bug.
            SdkError::ConstructionFailure(_) => StoreError::Permanent,
            SdkError::ServiceError(_) => match self.as_service_error().and_then(|e| e.code()) {
                Some(c) if INPUT_ERROR_CODES.contains(&c) => StoreError::Invalid,
                Some(c) if PERMANENT_ERROR_CODES.contains(&c) => StoreError::Permanent,
                _ => StoreError::Unavailable,
            },
            // Timeouts, connection failures, a response cut short: try again.
            _ => StoreError::Unavailable,
        };
        wrap(Box::new(self))
    }
}

impl Classify for BuildError {
    /// A request builder missing a field this code must set: a bug.
    fn classify(self) -> StoreError {
        StoreError::Permanent(Box::new(self))
    }
}

/// A failed DynamoDB call (or request build) as a store error, the failure kept as its source.
pub(super) fn store_error(e: impl Classify) -> StoreError {
    e.classify()
}

pub(super) fn is_conditional_failure<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    e.as_service_error().and_then(|se| se.code()) == Some("ConditionalCheckFailedException")
}

pub(super) fn is_transaction_cancelled<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    e.as_service_error().and_then(|se| se.code()) == Some("TransactionCanceledException")
}

pub(super) fn corrupt(id: &str, what: impl Into<String>) -> StoreError {
    StoreError::Corrupt { id: id.to_owned(), what: what.into() }
}

/// A conditional write's result: `Ok(false)` when its condition did not hold.
pub(super) fn applied<T, E, R>(res: Result<T, SdkError<E, R>>) -> Result<bool, StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match res {
        Ok(_) => Ok(true),
        Err(e) if is_conditional_failure(&e) => Ok(false),
        Err(e) => Err(store_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::operation::query::QueryError;

    use super::*;

    fn answered(code: &str) -> SdkError<PutItemError, ()> {
        let meta = ErrorMetadata::builder().code(code).message("m").build();
        SdkError::service_error(PutItemError::generic(meta), ())
    }

    #[test]
    fn throttling_server_errors_timeouts_and_dispatch_failures_are_worth_retrying() {
        for code in ["ThrottlingException", "ProvisionedThroughputExceededException", "InternalServerError"] {
            assert!(matches!(store_error(answered(code)), StoreError::Unavailable(_)), "{code}");
        }
        assert!(matches!(store_error(SdkError::<PutItemError, ()>::timeout_error("slow")), StoreError::Unavailable(_)));
        let refused = aws_sdk_dynamodb::error::ConnectorError::io("connection refused".into());
        assert!(matches!(
            store_error(SdkError::<QueryError, ()>::dispatch_failure(refused)),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn refused_input_is_invalid_for_the_caller_to_change() {
        assert!(matches!(store_error(answered("ValidationException")), StoreError::Invalid(_)));
    }

    #[test]
    fn a_missing_table_denied_access_or_a_request_built_wrong_is_permanent() {
        for code in ["ResourceNotFoundException", "AccessDeniedException", "UnrecognizedClientException"] {
            assert!(matches!(store_error(answered(code)), StoreError::Permanent(_)), "{code}");
        }
        let unbuilt = SdkError::<PutItemError, ()>::construction_failure("no table name");
        assert!(matches!(store_error(unbuilt), StoreError::Permanent(_)));
        assert!(matches!(store_error(BuildError::missing_field("key", "a key is needed")), StoreError::Permanent(_)));
    }

    #[test]
    fn the_sdk_error_stays_the_source_with_its_code() {
        let err = store_error(answered("AccessDeniedException"));
        let source = err.source().expect("a source");
        let sdk = source.downcast_ref::<SdkError<PutItemError, ()>>().expect("the SDK error itself");
        assert_eq!(sdk.as_service_error().and_then(|e| e.code()), Some("AccessDeniedException"));
    }
}
