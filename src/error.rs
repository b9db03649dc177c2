//! What a caller can be told, and the one mapping from error to status.

use http::StatusCode;

/// Why a request was not forwarded, sorted by who caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    // Downstream: the caller's fault.
    MissingKey,
    InvalidKey,
    NoRoute,
    // The route's prefix and host match, its methods do not; `allow`
    // indexes the router's `Allow` values.
    MethodNotAllowed {
        allow: u32,
    },
    Forbidden,
    RateLimited {
        retry_after: u64,
    },
    TooManyFailures {
        retry_after: u64,
    },
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestTimeout,
    /// The client already holds `listen.max_tunnels_per_client` tunnels.
    TooManyTunnels,
    // Upstream: the service behind keygate.
    BadGateway,
    GatewayTimeout,
    // keygate itself: at its cap of requests in flight.
    Overloaded,
    // Downstream: the client's quota for this calendar period is used up.
    QuotaExceeded {
        retry_after: u64,
    },
    // Internal: the shared limiter store failed and `on_error = "deny"`.
    LimiterUnavailable,
    // Downstream: a Bearer token failed this check.
    InvalidToken {
        check: TokenCheck,
    },
    // Downstream: a token caller lacks a scope of the route (by index).
    InsufficientScope {
        route: u32,
    },
}

/// The token check that failed, named in the 401's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Malformed,
    Signature,
    Algorithm,
    Issuer,
    Audience,
    Expired,
    NotYetValid,
    Lifetime,
}

impl TokenCheck {
    /// The check's name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            TokenCheck::Malformed => "malformed",
            TokenCheck::Signature => "signature",
            TokenCheck::Algorithm => "algorithm",
            TokenCheck::Issuer => "issuer",
            TokenCheck::Audience => "audience",
            TokenCheck::Expired => "expired",
            TokenCheck::NotYetValid => "not_yet_valid",
            TokenCheck::Lifetime => "lifetime",
        }
    }

    /// The refusal's message.
    pub fn message(self) -> &'static str {
        match self {
            TokenCheck::Malformed => "Invalid token: malformed",
            TokenCheck::Signature => "Invalid token: signature",
            TokenCheck::Algorithm => "Invalid token: algorithm",
            TokenCheck::Issuer => "Invalid token: issuer",
            TokenCheck::Audience => "Invalid token: audience",
            TokenCheck::Expired => "Invalid token: expired",
            TokenCheck::NotYetValid => "Invalid token: not yet valid",
            TokenCheck::Lifetime => "Invalid token: lifetime",
        }
    }
}

impl Reject {
    /// The status code, `error` code and human message of this rejection.
    pub fn parts(self) -> (StatusCode, &'static str, &'static str) {
        use Reject::*;
        match self {
            MissingKey => (StatusCode::UNAUTHORIZED, "missing_api_key", "API key missing"),
            InvalidKey => (StatusCode::UNAUTHORIZED, "invalid_api_key", "Invalid API key"),
            NoRoute => (StatusCode::NOT_FOUND, "no_route", "No route matches this request"),
            MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "The route does not take this method")
            }
            Forbidden => (StatusCode::FORBIDDEN, "forbidden", "This client may not call this route"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Rate limit exceeded"),
            TooManyFailures { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                "Too many failed authentications from this address",
            ),
            BadRequest => (StatusCode::BAD_REQUEST, "bad_request", "Malformed or ambiguous request"),
            HeadersTooLarge => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", "Request headers too large")
            }
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "Request body too large"),
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout", "Request body not received in time"),
            TooManyTunnels => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_tunnels", "Too many open tunnels for this client")
            }
            BadGateway => (StatusCode::BAD_GATEWAY, "bad_gateway", "Upstream unavailable"),
            GatewayTimeout => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout", "Upstream timed out"),
            Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Too many requests in flight; retry shortly"),
            QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", "Quota for this period used up"),
            LimiterUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "limiter_unavailable", "Rate limiter unavailable; try again")
            }
            InvalidToken { check } => (StatusCode::UNAUTHORIZED, "invalid_token", check.message()),
            InsufficientScope { .. } => {
                (StatusCode::FORBIDDEN, "insufficient_scope", "The token lacks a scope this route requires")
            }
        }
    }

    /// The gRPC status code of this rejection, for callers speaking gRPC
    /// (`application/grpc*`): the same decision as `parts`, rendered for them.
    pub fn grpc_status(self) -> u8 {
        use Reject::*;
        // The codes of grpc/grpc doc/statuscodes.md.
        const INTERNAL: u8 = 13;
        const UNAVAILABLE: u8 = 14;
        const UNAUTHENTICATED: u8 = 16;
        const PERMISSION_DENIED: u8 = 7;
        const UNIMPLEMENTED: u8 = 12;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const DEADLINE_EXCEEDED: u8 = 4;
        match self {
            MissingKey | InvalidKey | InvalidToken { .. } => UNAUTHENTICATED,
            Forbidden | InsufficientScope { .. } => PERMISSION_DENIED,
            NoRoute | MethodNotAllowed { .. } => UNIMPLEMENTED,
            RateLimited { .. } | TooManyFailures { .. } | QuotaExceeded { .. } | TooManyTunnels => RESOURCE_EXHAUSTED,
            PayloadTooLarge => RESOURCE_EXHAUSTED,
            BadRequest | HeadersTooLarge => INTERNAL,
            RequestTimeout | GatewayTimeout => DEADLINE_EXCEEDED,
            BadGateway | Overloaded | LimiterUnavailable => UNAVAILABLE,
        }
    }

    /// Seconds to put in `Retry-After`, if any.
    pub fn retry_after(self) -> Option<u64> {
        match self {
            Reject::RateLimited { retry_after }
            | Reject::TooManyFailures { retry_after }
            | Reject::QuotaExceeded { retry_after } => Some(retry_after),
            // Slots free as responses end: usually within a second.
            Reject::Overloaded => Some(1),
            _ => None,
        }
    }

    /// The `error` code, for logs and metrics.
    pub fn code(self) -> &'static str {
        self.parts().1
    }
}
