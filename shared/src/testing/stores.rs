//! The fake store's replays (saved under a version check), tenants with
//! their keys and quota counters, and status counts applied once per batch.

use super::{FakeStore, KeyRow};
use crate::domain::{Deltas, EpochMillis, KeyId, Quotas, Replay, ReplayId, TaskStatus, Tenant, TenantId};
use crate::ports::{CountStore, ReplayStore, StoreError, TenantStore};

impl ReplayStore for FakeStore {
    async fn put_replay(&self, r: &Replay) -> Result<(), StoreError> {
        self.lock().replays.entry(r.id.clone()).or_insert_with(|| r.clone());
        Ok(())
    }

    async fn get_replay(&self, id: &ReplayId) -> Result<Option<Replay>, StoreError> {
        Ok(self.lock().replays.get(id).cloned())
    }

    async fn save_replay(&self, r: &Replay) -> Result<bool, StoreError> {
        let mut t = self.lock();
        match t.replays.get_mut(&r.id) {
            Some(stored) if stored.version + 1 == r.version => {
                *stored = r.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl TenantStore for FakeStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.lock().tenants.insert(tenant.id.clone(), tenant.clone());
        Ok(())
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        Ok(self.lock().tenants.values().cloned().collect())
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        Ok(self.lock().tenants.get(id).cloned())
    }

    async fn update_tenant(
        &self,
        id: &TenantId,
        enabled: Option<bool>,
        quotas: Option<Quotas>,
    ) -> Result<bool, StoreError> {
        let mut t = self.lock();
        let Some(tenant) = t.tenants.get_mut(id) else { return Ok(false) };
        tenant.enabled = enabled.unwrap_or(tenant.enabled);
        tenant.quotas = quotas.unwrap_or(tenant.quotas);
        Ok(true)
    }

    async fn put_key(
        &self,
        tenant: &TenantId,
        key_id: &KeyId,
        hash: &str,
        now: EpochMillis,
        expires_at: EpochMillis,
    ) -> Result<(), StoreError> {
        let row = KeyRow {
            tenant: tenant.clone(),
            key_id: key_id.clone(),
            created_at: now,
            revoked_at: None,
            expires_at: Some(expires_at),
        };
        self.lock().keys.insert(hash.to_owned(), row);
        Ok(())
    }

    async fn tenant_of_key(&self, hash: &str) -> Result<Option<crate::domain::KeyGrant>, StoreError> {
        Ok(self
            .lock()
            .keys
            .get(hash)
            .filter(|k| k.revoked_at.is_none())
            .map(|k| crate::domain::KeyGrant { tenant: k.tenant.clone(), expires_at: k.expires_at }))
    }

    async fn revoke_key(&self, tenant: &TenantId, key_id: &KeyId, now: EpochMillis) -> Result<bool, StoreError> {
        let mut t = self.lock();
        let Some(k) = t.keys.values_mut().find(|k| k.tenant == *tenant && k.key_id == *key_id) else {
            return Ok(false);
        };
        k.revoked_at.get_or_insert(now);
        Ok(true)
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<crate::domain::KeyInfo>, StoreError> {
        let t = self.lock();
        Ok(t.keys
            .values()
            .filter(|k| k.tenant == *tenant)
            .map(|k| crate::domain::KeyInfo {
                id: k.key_id.clone(),
                created_at: k.created_at,
                revoked_at: k.revoked_at,
                expires_at: k.expires_at,
            })
            .collect())
    }

    /// Like the adapter, against the stored count, not the caller's copy.
    async fn reserve_active(&self, tenant: &Tenant, n: u64) -> Result<bool, StoreError> {
        let mut t = self.lock();
        let Some(stored) = t.tenants.get_mut(&tenant.id) else { return Ok(false) };
        if stored.active + n > tenant.quotas.max_active_tasks {
            return Ok(false);
        }
        stored.active += n;
        Ok(true)
    }

    async fn release_active(&self, tenant: &TenantId, n: u64) -> Result<(), StoreError> {
        if let Some(stored) = self.lock().tenants.get_mut(tenant).filter(|t| t.active >= n) {
            stored.active -= n;
        }
        Ok(())
    }

    async fn take_rate(&self, tenant: &Tenant, n: u64, now: EpochMillis) -> Result<bool, StoreError> {
        let mut t = self.lock();
        let used = t.rates.entry((tenant.id.clone(), now / 1000)).or_default();
        if *used + n > tenant.quotas.create_rate_per_second {
            return Ok(false);
        }
        *used += n;
        Ok(true)
    }
}

impl crate::ports::EventSettings for FakeStore {
    async fn event_types(&self, tenant: &TenantId) -> Result<Vec<crate::domain::EventType>, StoreError> {
        Ok(self.lock().event_types.get(tenant).cloned().unwrap_or_default())
    }

    async fn set_event_types(&self, tenant: &TenantId, types: &[crate::domain::EventType]) -> Result<(), StoreError> {
        self.lock().event_types.insert(tenant.clone(), types.to_vec());
        Ok(())
    }
}

impl CountStore for FakeStore {
    async fn apply_counts(&self, batch_id: &str, deltas: &Deltas) -> Result<bool, StoreError> {
        let mut t = self.lock();
        if !t.applied_batches.insert(batch_id.to_owned()) {
            return Ok(false);
        }
        for (tenant, d) in deltas {
            let counts = t.counts.entry(tenant.clone()).or_default();
            for (status, n) in &d.statuses {
                *counts.entry(*status).or_default() += n;
            }
            if let Some(stored) = TenantId::parse(tenant).ok().and_then(|id| t.tenants.get_mut(&id)) {
                stored.active = stored.active.saturating_add_signed(d.active);
            }
            for (minute, a) in &d.minutes {
                let m = t.activity.entry((tenant.clone(), *minute)).or_default();
                m.delivered += a.delivered;
                m.retried += a.retried;
                m.failed += a.failed;
            }
        }
        Ok(true)
    }

    async fn counts(&self, tenant: &TenantId) -> Result<Vec<(TaskStatus, i64)>, StoreError> {
        let t = self.lock();
        Ok(t.counts.get(tenant.as_str()).map(|c| c.iter().map(|(s, n)| (*s, *n)).collect()).unwrap_or_default())
    }

    async fn activity(
        &self,
        tenant: &TenantId,
        since: crate::domain::EpochMillis,
    ) -> Result<Vec<(crate::domain::EpochMillis, crate::domain::Activity)>, StoreError> {
        let t = self.lock();
        let from = (tenant.as_str().to_owned(), since - since.rem_euclid(crate::domain::MINUTE_MS));
        Ok(t.activity
            .range(from..)
            .take_while(|((id, _), _)| id == tenant.as_str())
            .map(|((_, m), a)| (*m, *a))
            .collect())
    }
}

impl crate::ports::SigningSecrets for FakeStore {
    async fn put_secret(
        &self,
        tenant: &TenantId,
        info: &crate::domain::SecretInfo,
        secret: &crate::domain::SigningSecret,
    ) -> Result<(), StoreError> {
        self.lock().secrets.insert((tenant.clone(), info.id.clone()), (info.clone(), secret.clone()));
        Ok(())
    }

    async fn list_secrets(&self, tenant: &TenantId) -> Result<Vec<crate::domain::SecretInfo>, StoreError> {
        let mut out: Vec<_> =
            self.lock().secrets.iter().filter(|((t, _), _)| t == tenant).map(|(_, (i, _))| i.clone()).collect();
        out.sort_by_key(|i| (i.created_at, i.id.clone()));
        Ok(out)
    }

    async fn expire_secret(
        &self,
        tenant: &TenantId,
        id: &crate::domain::SecretId,
        until: EpochMillis,
    ) -> Result<bool, StoreError> {
        let mut t = self.lock();
        let Some((info, _)) = t.secrets.get_mut(&(tenant.clone(), id.clone())) else { return Ok(false) };
        info.until = Some(until);
        Ok(true)
    }

    async fn delete_secret(&self, tenant: &TenantId, id: &crate::domain::SecretId) -> Result<bool, StoreError> {
        Ok(self.lock().secrets.remove(&(tenant.clone(), id.clone())).is_some())
    }

    async fn signing_secrets(
        &self,
        tenant: &TenantId,
        now: EpochMillis,
    ) -> Result<Vec<crate::domain::SigningSecret>, StoreError> {
        let t = self.lock();
        if t.secrets_down {
            return Err(StoreError::Unavailable("signing secrets unavailable (test)".into()));
        }
        let mut live: Vec<_> = t
            .secrets
            .iter()
            .filter(|((t, _), (i, _))| t == tenant && i.signs_at(now))
            .map(|(_, v)| v.clone())
            .collect();
        live.sort_by_key(|(i, _)| (i.created_at, i.id.clone()));
        Ok(live.into_iter().map(|(_, s)| s).collect())
    }
}

impl crate::ports::AuditLog for FakeStore {
    async fn append_audit(&self, entry: &crate::domain::AuditEntry) -> Result<(), StoreError> {
        self.lock().audit.push(entry.clone());
        Ok(())
    }

    async fn count_auth_failure(&self, entry: &crate::domain::AuditEntry) -> Result<(), StoreError> {
        let minute = entry.at - entry.at.rem_euclid(60_000);
        let mut t = self.lock();
        let same = |e: &&mut crate::domain::AuditEntry| {
            e.action == entry.action && e.source_ip == entry.source_ip && e.at == minute
        };
        match t.audit.iter_mut().find(|e| same(e)) {
            Some(e) => e.count += 1,
            None => t.audit.push(crate::domain::AuditEntry { at: minute, count: 1, ..entry.clone() }),
        }
        Ok(())
    }

    /// Newest first; the cursor is the number of entries already returned.
    async fn audit_page(
        &self,
        query: &crate::domain::AuditQuery,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<crate::ports::AuditPage, StoreError> {
        let skip: usize = match cursor {
            None => 0,
            Some(c) => c.parse().map_err(|_| StoreError::Invalid("not a cursor of this store".into()))?,
        };
        let mut all: Vec<_> = self
            .lock()
            .audit
            .iter()
            .rev()
            .filter(|e| query.matches(e))
            .filter(|e| query.since.is_none_or(|s| e.at >= s) && query.until.is_none_or(|u| e.at <= u))
            .cloned()
            .collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.at));
        let items: Vec<_> = all.iter().skip(skip).take(limit).cloned().collect();
        let cursor = (skip + items.len() < all.len()).then(|| (skip + items.len()).to_string());
        Ok(crate::ports::AuditPage { items, cursor })
    }
}

/// Secret values "sealed" reversibly (`enc:fake:<base64>`): unit tests see
/// that the API seals and the sender opens, without KMS.
impl crate::ports::FieldSeal for FakeStore {
    async fn seal_fields(&self, _tenant: &TenantId, spec: &mut crate::domain::RequestSpec) -> Result<(), StoreError> {
        use base64::Engine;
        for v in spec.secret_values_mut() {
            if !v.starts_with(crate::domain::SEALED_PREFIX) {
                *v = format!("enc:fake:{}", base64::engine::general_purpose::STANDARD.encode(v.as_bytes()));
            }
        }
        Ok(())
    }

    async fn open_fields(&self, spec: &mut crate::domain::RequestSpec) -> Result<(), StoreError> {
        use base64::Engine;
        for v in spec.secret_values_mut() {
            if let Some(b64) = v.strip_prefix("enc:fake:") {
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
                *v = String::from_utf8(bytes).unwrap_or_default();
            }
        }
        Ok(())
    }
}
