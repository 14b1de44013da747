//! What the leader writes back to each rule custom resource's status:
//! condition `Accepted` (True, or False with reason `Invalid` and the
//! errors), `observedGeneration`, and `applied: N/M`, the connected proxies
//! the resource affects (M) and those that acknowledged a config version
//! containing its observed generation (N), counted by `push::applied`.

use serde_json::{json, Value};

/// The verdict on one resource's current generation.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// In the replicated state since config `version`.
    Accepted { version: u64 },
    /// Kept out, with why (`reason` is `Invalid` or `Conflict`).
    Refused {
        reason: &'static str,
        errors: Vec<String>,
    },
}

/// The status to write, or `None` when `current` already says it.
/// `applied` is the `N/M` of an accepted resource.
pub fn patch(
    current: Option<&Value>,
    generation: Option<i64>,
    verdict: &Verdict,
    applied: Option<&str>,
    now: &str,
) -> Option<Value> {
    let (status, reason, message) = match verdict {
        Verdict::Accepted { .. } => ("True", "Accepted", String::new()),
        Verdict::Refused { reason, errors } => ("False", *reason, errors.join("\n")),
    };
    let empty = Value::Null;
    let current = current.unwrap_or(&empty);
    let old = current["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Accepted"))
        .unwrap_or(&empty);
    let unchanged = old["status"] == status
        && old["reason"] == reason
        && old["message"].as_str().unwrap_or("") == message
        && current["observedGeneration"].as_i64() == generation
        && current["applied"].as_str() == applied;
    if unchanged {
        return None;
    }
    let since = match old["lastTransitionTime"].as_str() {
        Some(t) if old["status"] == status => t.to_string(),
        _ => now.to_string(),
    };
    let mut condition = json!({
        "type": "Accepted", "status": status, "reason": reason, "lastTransitionTime": since,
    });
    if !message.is_empty() {
        condition["message"] = json!(message);
    }
    Some(json!({
        "status": {
            "observedGeneration": generation,
            "conditions": [condition],
            "applied": applied,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_written_only_when_it_changes() {
        let accepted = Verdict::Accepted { version: 3 };
        let first = patch(None, Some(2), &accepted, Some("0/2"), "t1").expect("new");
        let status = &first["status"];
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(
            patch(Some(status), Some(2), &accepted, Some("0/2"), "t2"),
            None
        );
        let later =
            patch(Some(status), Some(2), &accepted, Some("2/2"), "t2").expect("applied moved");
        assert_eq!(later["status"]["conditions"][0]["lastTransitionTime"], "t1");
        let refused = Verdict::Refused {
            reason: "Invalid",
            errors: vec!["spec.http[0].route: weights sum to 110".into()],
        };
        let bad = patch(Some(status), Some(3), &refused, None, "t3").expect("refused");
        let condition = &bad["status"]["conditions"][0];
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], "Invalid");
        assert_eq!(condition["lastTransitionTime"], "t3");
        assert!(bad["status"]["applied"].is_null(), "removed");
    }
}
