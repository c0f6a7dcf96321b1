//! Identifiers as newtypes, so an id says what it names and a malformed one
//! is rejected once, where it enters (a path segment, a queue message, a
//! stored item). The text of each is the one Courier has always written, so
//! stored data and URLs stay readable:
//! - [`TaskId`]: `tsk_` + a UUIDv7 in 32 lowercase hex digits (sorts by creation);
//! - [`TenantId`]: `tnt_` + 16 lowercase hex digits (random);
//! - [`ReplayId`]: `rpl_` + a UUIDv7 in 32 lowercase hex digits;
//! - [`KeyId`]: 12 lowercase hex digits (random), the part of a key after `ck_`.

use std::fmt;

/// The text is not a well-formed id of the kind expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{text}` is not a {kind} id (expected {shape})")]
pub struct InvalidId {
    /// What was expected: "task", "tenant", "replay" or "key".
    pub kind: &'static str,
    pub text: String,
    shape: &'static str,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Defines an id newtype: `prefix` + `len` lowercase hex digits, made by `gen`.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $prefix:literal, $len:literal, $shape:literal, $gen:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// A new random id (UUIDv7-based ones sort by creation).
            pub fn generate() -> Self {
                let hex: String = $gen;
                Self(format!("{}{}", $prefix, &hex[..$len]))
            }

            /// Parses an id received from outside (a path segment, a queue
            /// message, a stored item).
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                match s.strip_prefix($prefix) {
                    Some(hex) if lower_hex(hex, $len) => Ok(Self(s.to_owned())),
                    _ => Err(InvalidId { kind: $kind, text: s.to_owned(), shape: $shape }),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl From<&$name> for String {
            fn from(id: &$name) -> String {
                id.0.clone()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

id_type!(
    /// A task identifier: `tsk_` followed by a UUIDv7 in 32 lowercase hex digits.
    TaskId, "task", "tsk_", 32, "tsk_ followed by 32 hex digits", uuid::Uuid::now_v7().simple().to_string()
);
impl TaskId {
    /// The id of the task a tenant creates under `business_id`: the same
    /// (tenant, business id) always names the same task, so the task's own
    /// item holds the uniqueness (no separate key item). `tsk_` + a UUIDv8
    /// (RFC 9562 custom layout) of SHA-256 over tenant and business id; unlike
    /// a generated id it does not sort by creation.
    pub fn derive(tenant: &TenantId, business_id: &str) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"courier-task-id\0");
        h.update(tenant.as_str().as_bytes());
        h.update(b"\0");
        h.update(business_id.as_bytes());
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let uuid = uuid::Builder::from_custom_bytes(bytes).into_uuid();
        Self(format!("tsk_{}", uuid.simple()))
    }

    /// Whether the id was derived from a business id ([`TaskId::derive`]).
    pub fn is_derived(&self) -> bool {
        self.0.as_bytes().get(4 + 12) == Some(&b'8')
    }
}

id_type!(
    /// A tenant identifier: `tnt_` followed by 16 random lowercase hex digits.
    TenantId, "tenant", "tnt_", 16, "tnt_ followed by 16 hex digits", uuid::Uuid::new_v4().simple().to_string()
);
id_type!(
    /// A replay identifier: `rpl_` followed by a UUIDv7 in 32 lowercase hex digits.
    ReplayId, "replay", "rpl_", 32, "rpl_ followed by 32 hex digits", uuid::Uuid::now_v7().simple().to_string()
);
id_type!(
    /// An API key's identifier: 12 random lowercase hex digits (no prefix: the
    /// key itself, `ck_<key_id>_<secret>`, carries the prefix).
    KeyId, "key", "", 12, "12 hex digits", uuid::Uuid::new_v4().simple().to_string()
);

id_type!(
    /// A signing secret's identifier: `whs_` followed by 16 random lowercase hex digits.
    SecretId, "secret", "whs_", 16, "whs_ followed by 16 hex digits", uuid::Uuid::new_v4().simple().to_string()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_task_ids_sort_by_creation() {
        let a = TaskId::generate();
        let b = TaskId::generate();
        assert_eq!(TaskId::parse(a.as_str()), Ok(a.clone()));
        assert!(a < b);
        let t = TenantId::generate();
        assert_eq!(TenantId::parse(t.as_str()), Ok(t.clone()));
        let r = ReplayId::generate();
        assert_eq!(ReplayId::parse(r.as_str()), Ok(r.clone()));
        let k = KeyId::generate();
        assert_eq!(KeyId::parse(k.as_str()), Ok(k.clone()));
    }

    #[test]
    fn derived_task_ids_are_stable_per_tenant_and_business_id() {
        let (a, b) = (TenantId::parse("tnt_0123456789abcdef").expect("id"), TenantId::generate());
        let id = TaskId::derive(&a, "order-1");
        assert_eq!(id, TaskId::derive(&a, "order-1"));
        assert_ne!(id, TaskId::derive(&a, "order-2"));
        assert_ne!(id, TaskId::derive(&b, "order-1"));
        assert_eq!(TaskId::parse(id.as_str()), Ok(id.clone()));
        assert!(id.is_derived() && !TaskId::generate().is_derived());
        // Fixed text: stored tasks keep their ids across releases.
        assert_eq!(id.as_str(), "tsk_bfb670d835fd8ab18dc568b4db012955");
    }

    #[test]
    fn ids_keep_the_text_courier_has_always_written() {
        assert!(TaskId::parse("tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3").is_ok());
        assert!(TenantId::parse("tnt_0123456789abcdef").is_ok());
        assert!(ReplayId::parse("rpl_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3").is_ok());
        assert!(KeyId::parse("0123456789ab").is_ok());
        assert_eq!(TenantId::generate().as_str().len(), 20);
        assert_eq!(ReplayId::generate().as_str().len(), 36);
    }

    #[test]
    fn foreign_or_malformed_ids_are_rejected_naming_the_kind() {
        for bad in
            ["", "tsk_", "msg_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3", "tsk_XYZ", "tsk_0190A0B1C2D3E4F5A6B7C8D9E0F1A2B3"]
        {
            assert!(TaskId::parse(bad).is_err(), "{bad} should be rejected");
        }
        for bad in ["", "tnt_", "tnt_missing", "tnt_0123456789ABCDEF", "tsk_0123456789abcdef", "tnt_0123456789abcdef0"]
        {
            assert!(TenantId::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(ReplayId::parse("tsk_0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3").is_err());
        for bad in ["", "0123456789a", "0123456789abc", "0123456789aG", "ck_0123456789"] {
            assert!(KeyId::parse(bad).is_err(), "{bad} should be rejected");
        }
        let err = TenantId::parse("tnt_x").expect_err("malformed");
        assert_eq!(err.kind, "tenant");
        assert!(err.to_string().contains("tnt_x"));
    }

    #[test]
    fn ids_are_plain_strings_in_json_and_malformed_ones_fail_to_deserialize() {
        let t = TenantId::parse("tnt_0123456789abcdef").expect("valid");
        assert_eq!(serde_json::to_string(&t).expect("json"), r#""tnt_0123456789abcdef""#);
        assert_eq!(serde_json::from_str::<TenantId>(r#""tnt_0123456789abcdef""#).expect("parses"), t);
        assert!(serde_json::from_str::<TenantId>(r#""tnt_nope""#).is_err());
        assert!(serde_json::from_str::<TaskId>(r#""x""#).is_err());
    }
}
