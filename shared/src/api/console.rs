//! The admin console: one HTML page, its script and its style sheet, all
//! embedded in the binary and served by the API function under `/admin`.
//! The page signs in with an API key kept in `sessionStorage` and reads the
//! same `/v1` routes as the CLI; it builds its DOM with `textContent` only.
//! Every answer carries a Content Security Policy that allows nothing but
//! this origin's script and style (no inline script, no inline handlers).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::IntoResponse;

const PAGE: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

/// The policy of every console answer: this origin only, no framing, no
/// form posts elsewhere, no plugins.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (axum::http::HeaderName::from_static("content-security-policy"), CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (axum::http::HeaderName::from_static("referrer-policy"), "no-referrer"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

pub async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_has_no_inline_script_or_handlers() {
        assert!(PAGE.contains(r#"<script src="/admin/console.js""#));
        assert!(PAGE.contains(r#"href="/admin/console.css""#));
        assert_eq!(PAGE.matches("<script").count(), 1, "one script element, the external one");
        // No inline event handler attribute (` onclick=`, ` onload=` …).
        let handler = PAGE.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "no inline event handler attribute");
        assert!(!PAGE.contains("style="), "no inline style");
        // The SVG namespace is a name, not an address the page loads.
        let script = SCRIPT.replace(r#""http://www.w3.org/2000/svg""#, "");
        for text in [PAGE, &script, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"), "nothing from another origin");
        }
    }

    #[test]
    fn the_script_never_writes_html_from_data() {
        for banned in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
            assert!(!SCRIPT.contains(banned), "console.js uses {banned}");
        }
    }
}
