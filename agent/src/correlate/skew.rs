//! `otel_version_skew`: OpenTelemetry Go modules linked below the version the build itself
//! required.
//!
//! What the agent can know on a host is what the executable says: `.go.buildinfo` lists every
//! module a linked package came from, with the version minimal version selection (MVS) chose,
//! and, for a replaced module, what was linked instead. The go.mod files of the modules are not
//! on the host. But MVS selects, for each module, the highest version any go.mod in the build
//! requires (the main module's or a dependency's: otelhttp v0.72.0 requires otel/sdk v1.47.0,
//! the otlptrace v1.47.0 exporter too). So the selected version *is* what the modules'
//! requirements ask for, and without a `replace` every linked module satisfies every
//! requirement. A `replace` that links an older version of the same module than the one
//! selected breaks that: some go.mod in the build requires code newer than what runs. That is
//! the rule, for `go.opentelemetry.io/` modules (where a mismatch makes instrumentation and SDK
//! disagree, e.g. `resource` merges failing on schema URLs, or an instrumentation calling API
//! the pinned SDK does not implement).
//!
//! Not flagged (nothing certain to compare): a replacement by a directory, by another module
//! path (a fork), or by a higher version; versions that are not semantic versions.

use std::cmp::Ordering;

use crate::{
    attribute::inventory::{Component, Inventory},
    buildinfo::Replacement,
};

/// One module linked below its selected version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skew {
    pub module: String,
    /// The version the build's requirements selected.
    pub required: String,
    /// The version the `replace` linked.
    pub linked: String,
}

impl Skew {
    /// `go.opentelemetry.io/otel/sdk v1.46.0 linked, v1.47.0 required (replace)`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} linked, {} required (replace)",
            self.module, self.linked, self.required
        )
    }
}

/// Every OpenTelemetry module of `inventory` linked below what the build required.
pub fn version_skew(inventory: &Inventory) -> Vec<Skew> {
    inventory.components.iter().filter_map(skew_of).collect()
}

fn skew_of(c: &Component) -> Option<Skew> {
    let Some(Replacement::Module { path, version }) = &c.replaced else {
        return None;
    };
    let required = c.version.as_deref()?;
    (*path == c.name && compare(version, required)? == Ordering::Less).then(|| Skew {
        module: c.name.clone(),
        required: required.to_owned(),
        linked: version.clone(),
    })
}

/// Semantic version order as Go modules use it (golang.org/x/mod/semver): `vMAJOR.MINOR.PATCH`,
/// a pre-release (`-rc.1`, pseudo-versions) below its release, build metadata (`+incompatible`)
/// ignored. `None` when either is not such a version.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (Version::parse(a)?, Version::parse(b)?);
    Some(
        a.core
            .cmp(&b.core)
            .then_with(|| compare_prerelease(a.pre, b.pre)),
    )
}

struct Version<'a> {
    core: [u64; 3],
    pre: Option<&'a str>,
}

impl<'a> Version<'a> {
    fn parse(v: &'a str) -> Option<Self> {
        let v = v.strip_prefix('v')?;
        let v = v.split_once('+').map_or(v, |(core, _build)| core);
        let (core, pre) = match v.split_once('-') {
            Some((core, pre)) if !pre.is_empty() => (core, Some(pre)),
            Some(_) => return None,
            None => (v, None),
        };
        let mut parts = core.split('.');
        let mut number = || -> Option<u64> {
            let p = parts.next()?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let core = [number()?, number()?, number()?];
        parts.next().is_none().then_some(Self { core, pre })
    }
}

/// A release sorts above its pre-releases; identifiers compare numerically when both are
/// numbers, numbers below words, words by ASCII; a longer list wins a tie.
fn compare_prerelease(a: Option<&str>, b: Option<&str>) -> Ordering {
    let (a, b) = match (a, b) {
        (None, None) => return Ordering::Equal,
        (None, Some(_)) => return Ordering::Greater,
        (Some(_), None) => return Ordering::Less,
        (Some(a), Some(b)) => (a, b),
    };
    let mut a_ids = a.split('.');
    let mut b_ids = b.split('.');
    loop {
        match (a_ids.next(), b_ids.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                let order = match (numeric(x), numeric(y)) {
                    // Compare numbers of any length without parsing: by length, then digits.
                    (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::attribute::inventory::Role;

    #[test]
    fn semantic_version_order() {
        use Ordering::{Equal, Greater, Less};
        for (a, b, want) in [
            ("v1.46.0", "v1.47.0", Less),
            ("v1.47.0", "v1.47.0", Equal),
            ("v1.10.0", "v1.9.9", Greater),
            ("v1.47.0-rc.1", "v1.47.0", Less),
            ("v1.47.0-rc.2", "v1.47.0-rc.10", Less),
            ("v1.47.0-alpha", "v1.47.0-1", Greater),
            ("v1.47.0-rc", "v1.47.0-rc.1", Less),
            ("v0.0.0-20260928230214-8a89bd6388cc", "v0.1.0", Less),
            ("v2.0.0+incompatible", "v2.0.0", Equal),
            ("v0.72.0", "v0.63.0", Greater),
        ] {
            assert_eq!(compare(a, b), Some(want), "{a} vs {b}");
        }
        for bad in [
            "1.2.3", "v1.2", "v1.2.3.4", "v1.x.3", "(devel)", "", "v1.2.3-", "v-1.2.3",
        ] {
            assert_eq!(compare(bad, "v1.2.3"), None, "{bad:?}");
        }
    }

    fn module(name: &str, version: &str, replaced: Option<Replacement>) -> Component {
        Component {
            name: name.into(),
            version: Some(version.into()),
            replaced,
            role: Role::Other,
        }
    }

    fn pin(path: &str, version: &str) -> Option<Replacement> {
        Some(Replacement::Module {
            path: path.into(),
            version: version.into(),
        })
    }

    #[test]
    fn only_a_replace_below_the_selected_version_is_skew() {
        const SDK: &str = "go.opentelemetry.io/otel/sdk";
        const OTEL: &str = "go.opentelemetry.io/otel";
        let inventory = Inventory {
            runtime: None,
            components: Arc::from(vec![
                module(OTEL, "v1.47.0", None),
                module(SDK, "v1.47.0", pin(SDK, "v1.46.0")),
                // Higher: newer code than required, which go.mod allows anyway.
                module(
                    "go.opentelemetry.io/otel/trace",
                    "v1.47.0",
                    pin("go.opentelemetry.io/otel/trace", "v1.48.0"),
                ),
                // A fork, a directory: nothing to compare.
                module(
                    "go.opentelemetry.io/otel/metric",
                    "v1.47.0",
                    pin("example.com/fork/metric", "v1.0.0"),
                ),
                module(
                    "go.opentelemetry.io/otel/log",
                    "v1.47.0",
                    Some(Replacement::Directory),
                ),
                // Not a semantic version.
                module(
                    "go.opentelemetry.io/proto/otlp",
                    "v1.11.0",
                    pin("go.opentelemetry.io/proto/otlp", "master"),
                ),
            ]),
            spans_off: None,
        };
        let skew = version_skew(&inventory);
        assert_eq!(
            skew,
            [Skew {
                module: SDK.into(),
                required: "v1.47.0".into(),
                linked: "v1.46.0".into(),
            }]
        );
        assert_eq!(
            skew[0].describe(),
            "go.opentelemetry.io/otel/sdk v1.46.0 linked, v1.47.0 required (replace)"
        );
        assert!(version_skew(&Inventory::default()).is_empty());
    }
}
