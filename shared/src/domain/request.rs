//! The HTTP request a task sends: validated newtypes for method and URL, and
//! the header rules (no hop-by-hop headers, secrets masked when shown).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The methods Courier sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
}

impl HttpMethod {
    pub const ALL: [HttpMethod; 7] =
        [Self::Get, Self::Post, Self::Put, Self::Patch, Self::Delete, Self::Head, Self::Options];

    /// Parses a method name, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(s))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Head => "HEAD",
            Self::Options => "OPTIONS",
        }
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An absolute http(s) URL with a host, at most [`TargetUrl::MAX_LEN`] bytes.
/// Its `Debug` masks secrets (see [`mask_url`]); `as_str` is what is sent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetUrl(url::Url);

impl TargetUrl {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.len() > Self::MAX_LEN {
            return Err("must be at most 2048 characters");
        }
        let url = url::Url::parse(s).map_err(|_| "must be an absolute URL")?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("scheme must be http or https");
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("must name a host");
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The parsed URL (its host already normalized: `127.1` is `127.0.0.1`).
    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// The URL with userinfo and secret-looking query values masked, for views and records.
    pub fn masked(&self) -> String {
        mask_url(self.as_str())
    }

    /// The host (without port), used for per-destination grouping.
    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or_default()
    }
}

impl fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TargetUrl").field(&self.masked()).finish()
    }
}

impl TryFrom<String> for TargetUrl {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TargetUrl> for String {
    fn from(u: TargetUrl) -> String {
        u.0.into()
    }
}

/// A request body as stored and sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Body {
    /// UTF-8 text (also what `json` and `form` bodies become).
    Text(String),
    /// Arbitrary bytes, stored as base64.
    Bytes(#[serde(with = "b64")] Vec<u8>),
}

impl Body {
    pub fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Bytes(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Text(t) => t.as_bytes().to_vec(),
            Self::Bytes(b) => b.clone(),
        }
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// Credentials Courier adds to the request (never shown back in full).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Auth {
    Basic { username: String, password: String },
    Bearer { token: String },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked().to_string())
    }
}

impl Auth {
    /// The `Authorization` header value.
    pub fn header_value(&self) -> String {
        use base64::Engine;
        match self {
            Self::Basic { username, password } => {
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")))
            }
            Self::Bearer { token } => format!("Bearer {token}"),
        }
    }

    /// A view with the secret masked.
    pub fn masked(&self) -> serde_json::Value {
        match self {
            Self::Basic { username, .. } => {
                serde_json::json!({"type": "basic", "username": username, "password": "***"})
            }
            Self::Bearer { .. } => serde_json::json!({"type": "bearer", "token": "***"}),
        }
    }
}

/// A listing shows at most this many bytes of a request line.
pub const REQUEST_LINE_MAX: usize = 300;

/// Everything needed to send the request: stored once at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSpec {
    pub method: HttpMethod,
    pub url: TargetUrl,
    /// Header names lowercased, in the caller's order.
    pub headers: Vec<(String, String)>,
    pub body: Option<Body>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    pub timeout_ms: u64,
    /// Follow up to 5 redirects (off by default: a redirect is an answer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow_redirects: bool,
    /// Which statuses succeed or retry, beyond the defaults.
    #[serde(default, skip_serializing_if = "super::ResponseRules::is_empty")]
    pub rules: super::ResponseRules,
    /// The task's flow key name (`flow_key`): limits shared by every task naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_key: Option<String>,
    /// The task opted out of signing (`"signing": false`): no `webhook-*` headers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsigned: bool,
    /// The trace the task was created in (every task has one since tracing
    /// came in; older ones have none and send no `traceparent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<super::TraceContext>,
    /// Where the outcome is reported, each as a task of its own.
    #[serde(default, skip_serializing_if = "super::Callbacks::is_empty")]
    pub callbacks: super::Callbacks,
}

impl RequestSpec {
    /// The flow keys governing this request when `tenant` sends it.
    pub fn flow_ref(&self, tenant: &super::TenantId) -> super::FlowRef {
        super::FlowRef::of(self.url.url(), self.flow_key.as_deref(), tenant).with_timeout(self.timeout_ms)
    }

    /// `METHOD url`, masked and cut as [`request_line`] does.
    pub fn request_line(&self) -> String {
        request_line(self.method.as_str(), self.url.as_str())
    }
}

/// `METHOD url` with the URL's secrets masked ([`mask_url`]), cut to
/// [`REQUEST_LINE_MAX`] bytes (ending in `…` when cut).
pub fn request_line(method: &str, url: &str) -> String {
    let line = format!("{method} {}", mask_url(url));
    if line.len() <= REQUEST_LINE_MAX {
        return line;
    }
    let mut end = REQUEST_LINE_MAX - '…'.len_utf8();
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

impl RequestSpec {
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
    pub const MAX_TIMEOUT_MS: u64 = 30_000;
    /// The largest body a task may carry (after base64 decoding).
    pub const MAX_BODY_BYTES: usize = 256 * 1024;
}

#[cfg(test)]
impl RequestSpec {
    /// A minimal request for unit tests.
    pub fn example() -> Self {
        Self {
            method: HttpMethod::Post,
            url: TargetUrl::parse("https://e.com").unwrap_or_else(|e| panic!("{e}")),
            headers: vec![],
            body: None,
            auth: None,
            timeout_ms: 1000,
            follow_redirects: false,
            flow_key: None,
            rules: super::ResponseRules::default(),
            unsigned: false,
            trace: None,
            callbacks: super::Callbacks::default(),
        }
    }
}

/// How a value sealed for storage starts (see [`RequestSpec::secret_values_mut`]).
pub const SEALED_PREFIX: &str = "enc:";

impl RequestSpec {
    /// The values stored encrypted: sensitive headers' values and the
    /// `auth` password or token.
    pub fn secret_values_mut(&mut self) -> Vec<&mut String> {
        let mut out: Vec<&mut String> =
            self.headers.iter_mut().filter(|(k, _)| is_sensitive_header(k)).map(|(_, v)| v).collect();
        match &mut self.auth {
            Some(Auth::Basic { password, .. }) => out.push(password),
            Some(Auth::Bearer { token }) => out.push(token),
            None => {}
        }
        out
    }
}

/// Headers whose values are secrets: never shown in full by a read endpoint or
/// a log line.
pub fn is_sensitive_header(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie" | "x-api-key" | "api-key" | "x-auth-token"
    )
}

/// A copy of `headers` with sensitive values masked (the first two characters
/// kept when the value is long enough to show them safely and is not sealed).
pub fn mask_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            if is_sensitive_header(k) {
                // A value stored sealed shows nothing of itself (nor of its seal).
                let hint = v.chars().count() > 12 && !v.starts_with(SEALED_PREFIX);
                let shown: String = if hint { v.chars().take(2).collect() } else { String::new() };
                (k.clone(), format!("{shown}***"))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

/// Words that make a query parameter's value a secret when they are a whole
/// word of its name (`api_key`, `apiKey`, `x-sig`), but not a mere substring
/// (`keyword`, `author`, `signal` stay visible).
const SECRET_WORDS: &[&str] =
    &["key", "sig", "pwd", "pass", "auth", "otp", "sid", "hmac", "jwt", "code", "nonce", "cookie", "session"];
/// Fragments that make a name secret wherever they appear (`access_token`,
/// `X-Amz-Signature`, `client_secret`, `sessionid`).
const SECRET_FRAGMENTS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "signature",
    "credential",
    "apikey",
    "accesskey",
    "privatekey",
    "sessionid",
    "sessid",
    "authorization",
];

/// Whether a query parameter's name looks like it carries a secret:
/// case-insensitive, by word (split at punctuation and camelCase) or by
/// fragment (see the lists above).
pub fn is_secret_param(name: &str) -> bool {
    let compact: String = name.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
    if SECRET_FRAGMENTS.iter().any(|f| compact.contains(f)) {
        return true;
    }
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            words.push(std::mem::take(&mut current));
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower {
            words.push(std::mem::take(&mut current));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        current.push(c.to_ascii_lowercase());
    }
    words.push(current);
    words.iter().any(|w| SECRET_WORDS.contains(&w.as_str()))
}

/// A URL for showing: userinfo becomes `***:***` and the values of
/// secret-looking query parameters `***`; everything else is kept byte for
/// byte. Unparseable input is shown as `***` rather than risk a secret.
pub fn mask_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "***".to_owned();
    };
    if !url.username().is_empty() {
        let _ = url.set_username("***");
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if let Some(query) = url.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| {
                let name = pair.split('=').next().unwrap_or_default();
                let decoded: String =
                    url::form_urlencoded::parse(name.as_bytes()).map(|(k, _)| k.into_owned()).collect();
                if is_secret_param(&decoded) { format!("{name}=***") } else { pair.to_owned() }
            })
            .collect();
        url.set_query(Some(&masked.join("&")));
    }
    url.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_secret_query_values_are_masked_and_the_rest_kept() {
        assert_eq!(
            mask_url("http://user:secret@127.0.0.1:8080/x?token=abc&page=2"),
            "http://***:***@127.0.0.1:8080/x?token=***&page=2"
        );
        assert_eq!(mask_url("https://user@h.example/"), "https://***@h.example/");
        assert_eq!(
            mask_url("https://h.example/p?api_key=1&apiKey=2&X-Amz-Signature=3&sig=4&q=a%20b&keyword=x&author=me"),
            "https://h.example/p?api_key=***&apiKey=***&X-Amz-Signature=***&sig=***&q=a%20b&keyword=x&author=me"
        );
        assert_eq!(
            mask_url("https://h.example/?access_token=a&client_secret=b&password=c&pwd=d&auth=e&Session=f&flag"),
            "https://h.example/?access_token=***&client_secret=***&password=***&pwd=***&auth=***&Session=***&flag"
        );
        assert_eq!(mask_url("https://h.example/?acc%65ss_token=a"), "https://h.example/?acc%65ss_token=***");
        assert_eq!(mask_url("https://h.example/a?b=c#frag"), "https://h.example/a?b=c#frag");
        assert_eq!(mask_url("not a url"), "***");
        let once = mask_url("http://u:p@h.example/?token=t");
        assert_eq!(mask_url(&once), once, "masking twice changes nothing");
        let url = TargetUrl::parse("http://u:p@h.example/?secret=s").expect("valid");
        assert!(!format!("{url:?}").contains("secret=s"));
        assert!(url.as_str().contains("u:p@"), "the real URL is what is sent");
    }

    #[test]
    fn a_request_line_is_masked_and_cut_on_a_character() {
        assert_eq!(request_line("GET", "https://h.example/a?token=t"), "GET https://h.example/a?token=***");
        let long = format!("https://h.example/{}", "é".repeat(400));
        let line = request_line("POST", &long);
        assert!(line.len() <= REQUEST_LINE_MAX, "{} bytes", line.len());
        assert!(line.starts_with("POST https://h.example/") && line.ends_with('…'));
    }

    #[test]
    fn secret_looking_parameter_names_are_recognised_by_word_or_fragment() {
        for name in [
            "token",
            "KEY",
            "api_key",
            "apikey",
            "apiKey",
            "secret",
            "signature",
            "sig",
            "password",
            "passwd",
            "pwd",
            "auth",
            "access_token",
            "refresh-token",
            "credential",
            "X-Amz-Credential",
            "session",
            "sessionid",
            "PHPSESSID",
            "code",
            "private_key",
            "hmac",
        ] {
            assert!(is_secret_param(name), "{name} should be masked");
        }
        for name in ["page", "q", "keyword", "author", "signal", "limit", "monkey", "sort", "passenger_count"] {
            assert!(!is_secret_param(name), "{name} should stay visible");
        }
    }

    #[test]
    fn methods_parse_case_insensitively() {
        assert_eq!(HttpMethod::parse("post"), Some(HttpMethod::Post));
        assert_eq!(HttpMethod::parse("OPTIONS"), Some(HttpMethod::Options));
        assert_eq!(HttpMethod::parse("TRACE"), None);
        assert_eq!(HttpMethod::parse(""), None);
    }

    #[test]
    fn urls_must_be_absolute_http_with_a_host() {
        assert!(TargetUrl::parse("https://example.com/hook?a=1").is_ok());
        assert!(TargetUrl::parse("http://127.0.0.1:8080/").is_ok());
        assert_eq!(TargetUrl::parse("ftp://example.com").expect_err("rejected"), "scheme must be http or https");
        assert_eq!(TargetUrl::parse("/relative").expect_err("rejected"), "must be an absolute URL");
        assert_eq!(TargetUrl::parse("not a url").expect_err("rejected"), "must be an absolute URL");
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert_eq!(TargetUrl::parse(&long).expect_err("rejected"), "must be at most 2048 characters");
        assert_eq!(
            TargetUrl::parse("https://example.com:8443/x").map(|u| u.host().to_owned()),
            Ok("example.com".into())
        );
    }

    #[test]
    fn sensitive_header_values_are_masked() {
        let h = vec![
            ("authorization".to_owned(), "Bearer abcdefghijklmnop".to_owned()),
            ("cookie".to_owned(), "s=1".to_owned()),
            ("x-trace".to_owned(), "t-1".to_owned()),
        ];
        let m = mask_headers(&h);
        assert_eq!(m[0].1, "Be***");
        assert_eq!(m[1].1, "***");
        assert_eq!(m[2].1, "t-1");
    }
}
