//! A task's secret values (sensitive headers, `auth` credentials) stored
//! encrypted: sealed by the API before a task is written, opened by the
//! sender just before it sends.

use std::future::Future;

use super::StoreError;
use crate::domain::{RequestSpec, TenantId};

pub trait FieldSeal: Send + Sync + 'static {
    /// Replaces each secret value not sealed yet by its sealed form.
    fn seal_fields(
        &self,
        tenant: &TenantId,
        spec: &mut RequestSpec,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Replaces each sealed value by the value itself.
    fn open_fields(&self, spec: &mut RequestSpec) -> impl Future<Output = Result<(), StoreError>> + Send;
}
