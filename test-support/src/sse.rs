//! Server-Sent Events as the gateway's `GET /v1/transactions/events` sends them:
//! `data:` lines, each event ended by a blank line, each data a JSON object.

/// Takes every complete event off the front of `buffer` (what has been read of the
/// stream so far), parsed; an incomplete last one stays for the next read.
pub fn take_events(buffer: &mut String) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        for line in block.lines() {
            if let Some(data) = line.strip_prefix("data:") {
                out.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_events_are_taken_and_a_partial_one_waits() {
        let mut buffer = "data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\"".to_string();
        assert_eq!(take_events(&mut buffer), vec![serde_json::json!({"a": 1})]);
        assert_eq!(buffer, "data: {\"b\"");
        buffer.push_str(":2}\n\n");
        assert_eq!(take_events(&mut buffer), vec![serde_json::json!({"b": 2})]);
        assert!(buffer.is_empty());
    }
}
