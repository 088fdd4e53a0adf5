//! Azure failures, and what the controllers should do about each: retry soon, wait, or report a problem only
//! a change can fix. Clients branch on the error `code`, never on the message, as Graph and ARM document.

use std::time::Duration;

/// What a failure means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttled: retry after the given delay (Retry-After, or a default).
    Throttled(Duration),
    /// A transient failure (5xx, timeout, connection): retry with backoff.
    Transient,
    /// The object does not exist (or is not replicated yet, right after a create).
    NotFound,
    /// The operator's identity lacks a permission: retrying does not help until someone grants it.
    Forbidden,
    /// A conflict with existing state (e.g. an assignment that exists under another name).
    Conflict,
    /// The request itself is wrong: only a change of spec helps.
    Invalid,
}

#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    /// An answer from Graph or ARM other than success.
    #[error("{operation}: HTTP {status} {code}: {message}{}", request_id.as_ref().map(|r| format!(" (request id {r})")).unwrap_or_default())]
    Api {
        operation: &'static str,
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, TLS failure, timeout.
    #[error("{operation}: {source}")]
    Transport {
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// No token for the operator's own identity.
    #[error("cannot obtain a token for the operator's identity: {0}")]
    Credential(String),
    /// An answer that does not have the documented shape.
    #[error("{operation}: unexpected response: {detail}")]
    Unexpected {
        operation: &'static str,
        detail: String,
    },
}

impl AzureError {
    /// The error code of an API error, for conditions and metrics.
    pub fn code(&self) -> &str {
        match self {
            AzureError::Api { code, .. } => code,
            AzureError::Transport { .. } => "Transport",
            AzureError::Credential(_) => "Credential",
            AzureError::Unexpected { .. } => "UnexpectedResponse",
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            AzureError::Api {
                status,
                code,
                retry_after,
                ..
            } => classify(*status, code, *retry_after),
            AzureError::Transport { .. } | AzureError::Unexpected { .. } => ErrorClass::Transient,
            // Entra may be briefly unreachable, or the projected token not yet written: retrying is right.
            AzureError::Credential(_) => ErrorClass::Transient,
        }
    }
}

/// Classifies an API error by status and code. Pure, so that every documented code is tested here.
pub fn classify(status: u16, code: &str, retry_after: Option<Duration>) -> ErrorClass {
    match (status, code) {
        (429, _) | (_, "TooManyRequests" | "Request_ThrottledTemporarily") => {
            ErrorClass::Throttled(retry_after.unwrap_or(Duration::from_secs(5)))
        }
        // ARM's answer while a new principal replicates: a wait, not a failure.
        (_, "PrincipalNotFound") => ErrorClass::NotFound,
        (404, _)
        | (_, "Request_ResourceNotFound" | "ResourceNotFound" | "RoleAssignmentNotFound") => {
            ErrorClass::NotFound
        }
        (401 | 403, _)
        | (
            _,
            "Authorization_RequestDenied" | "AuthorizationFailed" | "LinkedAuthorizationFailed",
        ) => ErrorClass::Forbidden,
        (409, _) | (_, "Request_MultipleObjectsWithSameKeyValue" | "RoleAssignmentExists") => {
            ErrorClass::Conflict
        }
        (408 | 500..=599, _) => ErrorClass::Transient,
        _ => ErrorClass::Invalid,
    }
}

/// Reads `Retry-After` as seconds (the form Graph and ARM send).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A DELETE's outcome: what is already gone (ARM's and Graph's 404) counts as deleted, so that every delete
/// can be retried.
pub fn deleted<T>(result: Result<T, AzureError>) -> Result<(), AzureError> {
    match result {
        Ok(_) | Err(AzureError::Api { status: 404, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_codes_classify_by_what_helps() {
        let five = Some(Duration::from_secs(5));
        assert_eq!(
            classify(429, "TooManyRequests", Some(Duration::from_secs(7))),
            ErrorClass::Throttled(Duration::from_secs(7))
        );
        assert_eq!(
            classify(429, "whatever", None),
            ErrorClass::Throttled(Duration::from_secs(5))
        );
        assert_eq!(
            classify(404, "Request_ResourceNotFound", None),
            ErrorClass::NotFound
        );
        assert_eq!(
            classify(400, "PrincipalNotFound", None),
            ErrorClass::NotFound,
            "replication delay"
        );
        assert_eq!(
            classify(403, "Authorization_RequestDenied", None),
            ErrorClass::Forbidden
        );
        assert_eq!(
            classify(403, "AuthorizationFailed", None),
            ErrorClass::Forbidden
        );
        assert_eq!(
            classify(409, "RoleAssignmentExists", None),
            ErrorClass::Conflict
        );
        assert_eq!(
            classify(503, "serviceNotAvailable", five),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(400, "Request_BadRequest", None),
            ErrorClass::Invalid
        );
        assert_eq!(
            classify(400, "InvalidPrincipalId", None),
            ErrorClass::Invalid
        );
    }

    #[test]
    fn messages_name_the_operation_code_and_request() {
        let e = AzureError::Api {
            operation: "graph addPassword",
            status: 403,
            code: "Authorization_RequestDenied".into(),
            message: "Insufficient privileges to complete the operation.".into(),
            request_id: Some("r-1".into()),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "graph addPassword: HTTP 403 Authorization_RequestDenied: Insufficient privileges to complete the operation. (request id r-1)"
        );
        assert_eq!(e.code(), "Authorization_RequestDenied");
    }
}
