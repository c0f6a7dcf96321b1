//! Structured JSON logs, one object per line, as CloudWatch Logs (and the
//! Embedded Metric Format) expect.
//!
//! Each line is flat: time (milliseconds), level, message, the event's fields,
//! then the fields of the span it happened in that the event does not carry
//! itself (a delivery's task and trace ids, an invocation's request id). The
//! span's name and a second copy of a field would be paid for on every line:
//! logs are billed by the byte.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the JSON subscriber; `RUST_LOG` filters (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .fmt_fields(JsonFields::new())
        .event_format(FlatJson)
        .with_env_filter(filter)
        .try_init();
}

/// The line format (see the module's documentation).
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = Map::new();
        event.record(&mut Fields(&mut line));
        let message = line.remove("message").unwrap_or(Value::String(String::new()));
        if let Some(span) = ctx.lookup_current() {
            let extensions = span.extensions();
            let recorded = extensions.get::<FormattedFields<N>>().map(|f| f.fields.as_str()).unwrap_or_default();
            if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(recorded) {
                for (k, v) in fields {
                    line.entry(k).or_insert(v);
                }
            }
        }
        // Time, level and message first, for a reader; then the fields.
        let head = serde_json::json!([
            crate::domain::format_millis(crate::domain::now_millis()),
            event.metadata().level().as_str(),
            message
        ]);
        let rest = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        let rest = if line.is_empty() { String::new() } else { format!(",{}", &rest[1..rest.len() - 1]) };
        writeln!(writer, r#"{{"timestamp":{},"level":{},"message":{}{rest}}}"#, head[0], head[1], head[2])
    }
}

/// An event's fields as JSON values (`message` first among them).
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::Bool(value));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_is_flat_with_the_spans_fields_once_and_no_span_name() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("delivery", task_id = "tsk_1", trace_id = tracing::field::Empty);
            let _in = span.enter();
            span.record("trace_id", "abc");
            tracing::info!(task_id = "tsk_1", attempt = 2, ok = true, took = 1.5, "attempt");
            tracing::warn!(error = %"boom", "outside fields");
        });
        tracing::info!("no subscriber: nothing");
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        assert!(
            text.starts_with(r#"{"timestamp":""#) && text.contains(r#"","level":"INFO","message":"attempt","#),
            "{text}"
        );
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = lines[0].as_object().expect("object");
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "attempt");
        assert_eq!((first["task_id"].clone(), first["trace_id"].clone()), ("tsk_1".into(), "abc".into()));
        assert_eq!(
            (first["attempt"].clone(), first["ok"].clone(), first["took"].clone()),
            (2.into(), true.into(), 1.5.into())
        );
        assert!(!first.contains_key("span") && !first.contains_key("name"), "{text}");
        assert_eq!(text.lines().next().expect("line").matches("tsk_1").count(), 1, "the task id once");
        let ts = first["timestamp"].as_str().expect("timestamp");
        assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "milliseconds, UTC: {ts}");
        assert_eq!((lines[1]["level"].clone(), lines[1]["error"].clone()), ("WARN".into(), "boom".into()));
        assert_eq!(lines[1]["task_id"], "tsk_1", "an event inside the span carries its fields");
    }
}
