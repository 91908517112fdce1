//! The daemon's API protocol: one JSON request line, one JSON reply line.
//! Parsing and authorization are pure and unit-tested.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest request accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request to the daemon.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is the daemon working, and what has it seen.
    Health {},
    /// Traced processes by live bytes.
    List {},
    /// Processes found without an allocator heapwatch can trace (scope `all`).
    Untraced {},
    /// The sites holding live memory in one process.
    Snapshot {
        /// The process.
        pid: u32,
        /// At most this many sites.
        top: usize,
        /// Count only blocks at least this many milliseconds old (0: all).
        #[serde(default)]
        min_age_ms: u64,
        /// Show the sites whose live bytes grew over the last this many
        /// milliseconds, by growth (0: the sites holding the most).
        #[serde(default)]
        since_ms: u64,
    },
    /// Trace one process exactly from now, for at least this long (scope
    /// `tiered`: it is escalated as if it grew); the reply is its pid.
    Trace {
        /// The process.
        pid: u32,
        /// For at least this many milliseconds.
        duration_ms: u64,
    },
}

/// One traced process in the reply to [`Request::List`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessListEntry {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Bytes in live blocks.
    pub live_bytes: u64,
    /// Live blocks.
    pub live_allocations: u64,
    /// Its container's id (12 digits), or empty.
    #[serde(default)]
    pub container: String,
}

/// One process in the reply to [`Request::Untraced`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UntracedEntry {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Why it is not traced (as `heapwatch_processes` names it).
    pub reason: String,
    /// Its container's id (12 digits), or empty.
    pub container: String,
}

/// The reply to [`Request::Health`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// heapwatch's version.
    pub version: String,
    /// Processes with heap state.
    pub tracked_processes: u64,
    /// Live blocks kept, in all processes.
    pub live_allocations: u64,
    /// Approximate memory of the tracker's state.
    pub tracker_memory_bytes: u64,
}

/// Why a request was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// Larger than [`MAX_REQUEST_BYTES`].
    #[error("request larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    /// Not a valid request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The caller may not see this process.
    #[error("permission denied: process {pid} belongs to another user (uid {owner})")]
    Forbidden {
        /// The process.
        pid: u32,
        /// Its owner.
        owner: u32,
    },
}

/// Parses one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge);
    }
    serde_json::from_slice(line).map_err(|e| RequestError::Malformed(e.to_string()))
}

/// Root sees every process; anyone else only their own (by real uid).
pub fn authorize(caller_uid: u32, pid: u32, owner_uid: u32) -> Result<(), RequestError> {
    if caller_uid == 0 || caller_uid == owner_uid {
        Ok(())
    } else {
        Err(RequestError::Forbidden {
            pid,
            owner: owner_uid,
        })
    }
}

/// A reply: `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What went wrong, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer, when ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Reply {
    /// A successful reply carrying `data`.
    pub fn ok(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            data: Some(data),
        }
    }

    /// A successful reply carrying `answer`, or a refusal if it cannot be encoded.
    pub fn answer(answer: &(impl Serialize + ?Sized)) -> Self {
        match serde_json::to_value(answer) {
            Ok(data) => Self::ok(data),
            Err(err) => Self::error(format!("encode the answer: {err}")),
        }
    }

    /// The answer a successful reply carries, decoded strictly as `T`; the
    /// refusal's message otherwise.
    pub fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        match (self.ok, self.data) {
            (true, Some(data)) => {
                serde_json::from_value(data).map_err(|e| format!("unreadable answer: {e}"))
            }
            _ => Err(self
                .error
                .unwrap_or_else(|| "the daemon sent an empty reply".to_owned())),
        }
    }

    /// A refusal.
    pub fn error(message: impl ToString) -> Self {
        Self {
            ok: false,
            error: Some(message.to_string()),
            data: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_request() {
        assert_eq!(parse_request(br#"{"op":"health"}"#), Ok(Request::Health {}));
        assert_eq!(parse_request(br#"{"op":"list"}"#), Ok(Request::List {}));
        assert_eq!(
            parse_request(br#"{"op":"trace","pid":42,"duration_ms":2000}"#),
            Ok(Request::Trace {
                pid: 42,
                duration_ms: 2000
            })
        );
        assert_eq!(
            parse_request(br#"{"op":"snapshot","pid":42,"top":10}"#),
            Ok(Request::Snapshot {
                pid: 42,
                top: 10,
                min_age_ms: 0,
                since_ms: 0
            })
        );
        assert_eq!(
            parse_request(br#"{"op":"snapshot","pid":42,"top":10,"min_age_ms":1500}"#),
            Ok(Request::Snapshot {
                pid: 42,
                top: 10,
                min_age_ms: 1500,
                since_ms: 0
            })
        );
    }

    #[test]
    fn refuses_malformed_and_oversized_requests() {
        for bad in [
            &b"not json"[..],
            br#"{"op":"reboot"}"#,
            br#"{"op":"snapshot","pid":-1,"top":1}"#,
            br#"{"op":"snapshot","pid":"x","top":1}"#,
            br#"{"op":"list","extra":1}"#,
            br#"{"op":"snapshot","pid":1,"top":1,"min_age_ms":-5}"#,
            b"",
        ] {
            assert!(
                matches!(parse_request(bad), Err(RequestError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(parse_request(&huge), Err(RequestError::TooLarge));
    }

    #[test]
    fn only_root_and_the_owner_may_snapshot() {
        assert!(authorize(0, 7, 1000).is_ok());
        assert!(authorize(1000, 7, 1000).is_ok());
        assert_eq!(
            authorize(1001, 7, 1000),
            Err(RequestError::Forbidden {
                pid: 7,
                owner: 1000
            })
        );
    }

    #[test]
    fn a_process_list_is_decoded_strictly() {
        let entry = ProcessListEntry {
            pid: 7,
            comm: "leak".to_owned(),
            live_bytes: 100,
            live_allocations: 1,
            container: String::new(),
        };
        let decoded: Vec<ProcessListEntry> = Reply::answer(std::slice::from_ref(&entry))
            .decode()
            .expect("ok");
        assert_eq!(decoded, [entry]);
        let renamed = Reply::ok(serde_json::json!([
            {"pid": 7, "comm": "leak", "live_bytes": 100, "live_blocks": 1}
        ]));
        let err = renamed
            .decode::<Vec<ProcessListEntry>>()
            .expect_err("a renamed field");
        assert!(err.contains("live_blocks"), "{err}");
        assert_eq!(
            Reply::error("no such process").decode::<Health>(),
            Err("no such process".to_owned())
        );
    }

    #[test]
    fn replies_serialize_compactly() {
        let text = serde_json::to_string(&Reply::error("no such process")).expect("json");
        assert_eq!(text, r#"{"ok":false,"error":"no such process"}"#);
    }
}
