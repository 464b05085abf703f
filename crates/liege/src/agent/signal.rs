//! [`Signal`]: a CloudEvents 1.0 envelope, read and written in the structured JSON format.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Map, Value};

/// The CloudEvents spec version liege speaks.
pub const SPEC_VERSION: &str = "1.0";

/// Longest `id` and `type`, in bytes.
pub const MAX_ID_TYPE_BYTES: usize = 256;
/// Longest `source`, `subject`, `dataschema` and `time`, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 1024;
/// Most extension attributes on one event.
pub const MAX_EXTENSIONS: usize = 32;

/// A message to an agent: a CloudEvents 1.0 event.
///
/// `id` identifies the signal for idempotency: a signal whose id the key has already applied
/// gets the first reply again and is not applied twice. An id the caller chose (given in
/// the event, or with [`Signal::with_id`]) is remembered for the node's dedupe retention
/// (24 h by default) however many signals the key takes meanwhile, across passivation,
/// restart and failover; an id liege made up (the event had none) only for the router's
/// own retries (the key's last few signals).
#[derive(Clone, Debug, PartialEq)]
pub struct Signal {
    /// Unique per source; defaults to a fresh UUIDv7.
    pub id: String,
    /// URI-reference of the producer, e.g. `/billing`.
    pub source: String,
    /// What happened or what to do, e.g. `inc`. Agents dispatch on it.
    pub ty: String,
    /// RFC 3339 timestamp, when known.
    pub time: Option<String>,
    /// Optional subject within the source.
    pub subject: Option<String>,
    /// Media type of `data`; `application/json` when absent.
    pub datacontenttype: Option<String>,
    /// Optional schema of `data`.
    pub dataschema: Option<String>,
    /// The payload (JSON).
    pub data: Option<Value>,
    /// Extension attributes (lower-case alphanumeric names, string/number/bool values).
    pub extensions: BTreeMap<String, Value>,
    /// Whether the caller chose `id` (then it is retained for the dedupe retention).
    caller_id: bool,
}

/// Why a CloudEvent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// Not JSON at all.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// JSON, but not a valid CloudEvent.
    #[error("invalid CloudEvent: {0}")]
    Invalid(String),
}

impl Signal {
    /// A signal of type `ty` with a fresh UUIDv7 id, source `/liege`, no time and no data.
    pub fn new(ty: impl Into<String>) -> Self {
        Self {
            id: new_signal_id(),
            source: "/liege".to_string(),
            ty: ty.into(),
            time: None,
            subject: None,
            datacontenttype: None,
            dataschema: None,
            data: None,
            extensions: BTreeMap::new(),
            caller_id: false,
        }
    }

    /// True if the caller chose the id (it is then retained for the dedupe retention); false
    /// for an id liege generated.
    pub fn has_caller_id(&self) -> bool {
        self.caller_id
    }

    /// Marks the id as chosen by the caller or not: for a signal that crossed the wire,
    /// whose JSON always carries an id.
    pub(crate) fn set_caller_id(&mut self, caller_id: bool) {
        self.caller_id = caller_id;
    }

    /// Sets `time` to now.
    pub fn with_time_now(mut self) -> Self {
        self.time = Some(now_rfc3339());
        self
    }

    /// Sets the payload.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Sets the id (for idempotency: the same id is applied at most once per key).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self.caller_id = true;
        self
    }

    /// Sets the source.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Parses the CloudEvents structured JSON format. A missing `id` gets a UUIDv7.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SignalError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| SignalError::Json(e.to_string()))?;
        Self::from_value(value)
    }

    /// Reads a CloudEvent from an already-parsed JSON value.
    pub fn from_value(value: Value) -> Result<Self, SignalError> {
        let Value::Object(mut map) = value else {
            return Err(SignalError::Invalid(
                "a CloudEvent must be a JSON object".into(),
            ));
        };
        match map.remove("specversion") {
            Some(Value::String(v)) if v == SPEC_VERSION => {}
            Some(other) => {
                return Err(SignalError::Invalid(format!(
                    "specversion must be \"1.0\", got {other}"
                )))
            }
            None => return Err(SignalError::Invalid("specversion is required".into())),
        }
        let (id, caller_id) = match map.remove("id") {
            None => (new_signal_id(), false),
            Some(v) => (required_string(v, "id")?, true),
        };
        let source = required_string(
            map.remove("source")
                .ok_or_else(|| SignalError::Invalid("source is required".into()))?,
            "source",
        )?;
        let ty = required_string(
            map.remove("type")
                .ok_or_else(|| SignalError::Invalid("type is required".into()))?,
            "type",
        )?;
        let time = optional_string(&mut map, "time")?;
        let subject = optional_string(&mut map, "subject")?;
        let datacontenttype = optional_string(&mut map, "datacontenttype")?;
        let dataschema = optional_string(&mut map, "dataschema")?;
        if map.contains_key("data_base64") {
            return Err(SignalError::Invalid(
                "data_base64 is not supported: agents take JSON data".into(),
            ));
        }
        let data = map.remove("data");
        if map.len() > MAX_EXTENSIONS {
            return Err(SignalError::Invalid(format!(
                "{} extension attributes; at most {MAX_EXTENSIONS} are accepted",
                map.len()
            )));
        }
        let mut extensions = BTreeMap::new();
        for (name, value) in map {
            let valid_name = !name.is_empty()
                && name.len() <= 20
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !valid_name {
                return Err(SignalError::Invalid(format!(
                    "extension attribute name {name:?} must be 1..=20 lower-case letters or digits"
                )));
            }
            if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                return Err(SignalError::Invalid(format!(
                    "extension attribute {name} must be a string, number or boolean"
                )));
            }
            extensions.insert(name, value);
        }
        let signal = Self {
            id,
            source,
            ty,
            time,
            subject,
            datacontenttype,
            dataschema,
            data,
            extensions,
            caller_id,
        };
        signal.check_bounds()?;
        Ok(signal)
    }

    /// Refuses attributes past their size bounds.
    pub fn check_bounds(&self) -> Result<(), SignalError> {
        let too_long = |name: &str, value: &str, max: usize| {
            (value.len() > max).then(|| {
                SignalError::Invalid(format!(
                    "{name} is {} bytes; at most {max} are accepted",
                    value.len()
                ))
            })
        };
        let checks = [
            too_long("id", &self.id, MAX_ID_TYPE_BYTES),
            too_long("type", &self.ty, MAX_ID_TYPE_BYTES),
            too_long("source", &self.source, MAX_ATTRIBUTE_BYTES),
            self.subject
                .as_deref()
                .and_then(|v| too_long("subject", v, MAX_ATTRIBUTE_BYTES)),
            self.dataschema
                .as_deref()
                .and_then(|v| too_long("dataschema", v, MAX_ATTRIBUTE_BYTES)),
            self.time
                .as_deref()
                .and_then(|v| too_long("time", v, MAX_ATTRIBUTE_BYTES)),
        ];
        match checks.into_iter().flatten().next() {
            Some(e) => Err(e),
            None if self.extensions.len() > MAX_EXTENSIONS => Err(SignalError::Invalid(format!(
                "{} extension attributes; at most {MAX_EXTENSIONS} are accepted",
                self.extensions.len()
            ))),
            None => Ok(()),
        }
    }

    /// Reads a CloudEvent in the HTTP binary mode: attributes in `ce-*` headers (values
    /// percent-decoded), the body as `data` (JSON; empty means no data), its `Content-Type`
    /// as `datacontenttype`. `headers` yields (lower-case name, value) pairs.
    pub fn from_binary<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Self, SignalError> {
        let mut map = Map::new();
        for (name, value) in headers {
            let Some(attr) = name.strip_prefix("ce-") else {
                continue;
            };
            if attr == "data" || attr == "data_base64" || attr == "datacontenttype" {
                return Err(SignalError::Invalid(format!(
                    "ce-{attr} is not an attribute of the binary mode"
                )));
            }
            map.insert(attr.to_string(), Value::String(percent_decode(value)?));
        }
        if let Some(ct) = content_type {
            map.insert("datacontenttype".into(), Value::String(ct.to_string()));
        }
        if !body.is_empty() {
            let data: Value = serde_json::from_slice(body)
                .map_err(|e| SignalError::Json(format!("the body (the event's data): {e}")))?;
            map.insert("data".into(), data);
        }
        Self::from_value(Value::Object(map))
    }

    /// The CloudEvents structured JSON object.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("specversion".into(), Value::String(SPEC_VERSION.into()));
        map.insert("id".into(), Value::String(self.id.clone()));
        map.insert("source".into(), Value::String(self.source.clone()));
        map.insert("type".into(), Value::String(self.ty.clone()));
        for (name, field) in [
            ("time", &self.time),
            ("subject", &self.subject),
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
        ] {
            if let Some(v) = field {
                map.insert(name.into(), Value::String(v.clone()));
            }
        }
        if let Some(data) = &self.data {
            map.insert("data".into(), data.clone());
        }
        for (name, value) in &self.extensions {
            map.insert(name.clone(), value.clone());
        }
        Value::Object(map)
    }

    /// The CloudEvents structured JSON encoding.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_value()).expect("a JSON value always serializes")
    }
}

/// Decodes `%XX` escapes of a binary-mode header value (UTF-8 after decoding).
/// Strict percent-decoding of a `ce-*` header value: every `%` must start an escape.
fn percent_decode(value: &str) -> Result<String, SignalError> {
    let bad = || SignalError::Invalid(format!("bad percent-encoding in header value {value:?}"));
    let mut escapes = value.split('%').skip(1);
    if !escapes
        .all(|rest| rest.len() >= 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit))
    {
        return Err(bad());
    }
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| SignalError::Invalid("a header value is not UTF-8 once decoded".into()))
}

fn required_string(value: Value, name: &str) -> Result<String, SignalError> {
    match value {
        Value::String(s) if !s.is_empty() => Ok(s),
        Value::String(_) => Err(SignalError::Invalid(format!("{name} must not be empty"))),
        _ => Err(SignalError::Invalid(format!("{name} must be a string"))),
    }
}

fn optional_string(
    map: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<String>, SignalError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => required_string(v, name).map(Some),
    }
}

/// A fresh UUIDv7 as a string: time-ordered, unique without coordination.
///
/// The 74 random bits come from the thread's cryptographically seeded generator (no system
/// call per id).
pub fn new_signal_id() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(ms, &random)
        .into_uuid()
        .to_string()
}

/// The current UTC time as RFC 3339 with milliseconds, e.g. `2026-11-23T11:20:00.123Z`.
pub fn now_rfc3339() -> String {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structured_json_round_trips_with_extensions() {
        let input = json!({
            "specversion": "1.0", "id": "abc", "source": "/billing", "type": "inc",
            "time": "2026-11-23T10:00:00Z", "subject": "s", "datacontenttype": "application/json",
            "data": {"by": 2}, "traceparent": "00-1", "priority": 3
        });
        let signal = Signal::from_value(input.clone()).unwrap();
        assert_eq!(signal.ty, "inc");
        assert_eq!(signal.extensions.len(), 2);
        assert_eq!(signal.to_value(), input);
        let again = Signal::from_json(&signal.to_json()).unwrap();
        assert_eq!(again, signal);
    }

    #[test]
    fn binary_header_values_are_percent_decoded_strictly() {
        assert_eq!(percent_decode("a%20b%C3%A9").unwrap(), "a bé");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        for bad in ["50%", "%2", "%zz", "a%%41"] {
            assert!(percent_decode(bad).is_err(), "{bad}");
        }
        assert!(percent_decode("%FF").is_err(), "not UTF-8 once decoded");
    }

    #[test]
    fn missing_id_gets_a_uuid_v7() {
        let s =
            Signal::from_value(json!({"specversion":"1.0","source":"/x","type":"get"})).unwrap();
        let uuid = uuid::Uuid::parse_str(&s.id).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
    }

    #[test]
    fn invalid_events_are_refused_with_a_reason() {
        for (bad, needle) in [
            (json!([1, 2]), "object"),
            (json!({"source":"/x","type":"t"}), "specversion"),
            (
                json!({"specversion":"0.3","source":"/x","type":"t"}),
                "specversion",
            ),
            (json!({"specversion":"1.0","type":"t"}), "source"),
            (json!({"specversion":"1.0","source":"/x"}), "type"),
            (json!({"specversion":"1.0","source":"/x","type":5}), "type"),
            (
                json!({"specversion":"1.0","source":"/x","type":"t","Bad-Name":"v"}),
                "extension",
            ),
            (
                json!({"specversion":"1.0","source":"/x","type":"t","ext":{"a":1}}),
                "extension",
            ),
        ] {
            let err = Signal::from_value(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        assert!(matches!(
            Signal::from_json(b"{nope"),
            Err(SignalError::Json(_))
        ));
    }

    #[test]
    fn rfc3339_dates_are_correct() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert!(now_rfc3339().ends_with('Z'));
    }
}
