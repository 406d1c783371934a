//! Path templating: identifiers in URL paths become `{id}`, so exported findings carry the
//! route (`/users/{id}/orders`) rather than a user's or an order's identity.
//!
//! Applied to the OTLP export of findings (`url.path` and the log body) while `--path-template`
//! is on (the default). The local JSON and table output keep raw paths: they stay on the host,
//! readable only by whoever can read the agent's stdout, and a raw path is what an operator
//! needs to find the call site. Query strings never get this far (`http::parse_request` drops
//! them).

/// What replaces an identifier segment.
pub const ID: &str = "{id}";

/// Shortest all-hex segment taken for an identifier (an object id, a hash); shorter hex
/// segments (`/v1/cafe`, `/api/beef`) are more often words than ids.
const MIN_HEX_ID: usize = 16;

/// Replaces every path segment that is an identifier with `{id}`: all decimal digits, a UUID
/// (8-4-4-4-12 hex digits, any case), or at least 16 hex digits with at least one decimal digit.
/// Other segments, empty segments and the slashes are kept as they are.
pub fn template_path(path: &str) -> String {
    if !path.split('/').any(is_id) {
        return path.to_owned();
    }
    path.split('/')
        .map(|seg| if is_id(seg) { ID } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether one path segment is an identifier.
pub fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    is_uuid(b)
        || (b.len() >= MIN_HEX_ID
            && b.iter().all(u8::is_ascii_hexdigit)
            && b.iter().any(u8::is_ascii_digit))
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_placeholders() {
        let cases = [
            ("/users/42", "/users/{id}"),
            ("/users/42/orders/7", "/users/{id}/orders/{id}"),
            ("/items/123e4567-e89b-12d3-a456-426614174000", "/items/{id}"),
            (
                "/items/123E4567-E89B-12D3-A456-426614174000/x",
                "/items/{id}/x",
            ),
            ("/blob/507f1f77bcf86cd799439011", "/blob/{id}"),
            ("/0", "/{id}"),
            ("42", "{id}"),
        ];
        for (raw, want) in cases {
            assert_eq!(template_path(raw), want, "{raw}");
        }
    }

    #[test]
    fn routes_stay_as_they_are() {
        for raw in [
            "/",
            "",
            "*",
            "/api/v1/cart",
            "/v2/users/me",
            "/api/beef",
            "/deadbeefdeadbeefdeadbeef",
            "/users/42x",
            "/a//b/",
            "/items/123e4567-e89b-12d3-a456-42661417400",
            "/items/123e4567_e89b_12d3_a456_426614174000",
            "/v1/traces",
        ] {
            assert_eq!(template_path(raw), raw, "{raw}");
        }
    }

    #[test]
    fn slashes_and_empty_segments_are_kept() {
        assert_eq!(template_path("//42//"), "//{id}//");
        assert_eq!(template_path("/42/"), "/{id}/");
    }

    #[test]
    fn templating_is_idempotent() {
        for raw in [
            "/users/42/orders/7",
            "/x/123e4567-e89b-12d3-a456-426614174000",
        ] {
            let once = template_path(raw);
            assert_eq!(template_path(&once), once);
        }
    }
}
