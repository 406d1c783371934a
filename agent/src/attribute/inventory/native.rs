//! OpenTelemetry in processes that are not Go, where it is cheap and certain to see:
//!
//! - a Java agent: `-javaagent:<path>` naming an OpenTelemetry agent jar, on the command line or
//!   in `JAVA_TOOL_OPTIONS` / `JDK_JAVA_OPTIONS` (how the OpenTelemetry Operator injects it). The
//!   agent is the SDK, the instrumentation and the OTLP exporter in one, and wires them itself.
//! - libraries the process has mapped (`/proc/<pid>/maps`): the C++ SDK's shared libraries
//!   (`libopentelemetry_trace.so`, `libopentelemetry_exporter_otlp_{http,grpc}.so`) and .NET's
//!   assemblies (`OpenTelemetry.dll`, mapped by the runtime when loaded).
//!
//! Python and Node load their SDKs as source files with `read`, not `mmap`: nothing in /proc
//! says a package was imported, so they get no inventory. Only file names are kept, never the
//! directories they are in or any other argument.

use super::{Component, Role};

/// File names of the OpenTelemetry Java agent and its vendor distributions (Splunk, AWS,
/// Grafana, Elastic all name it so).
fn is_otel_java_agent(file_name: &str) -> bool {
    let name = file_name.to_ascii_lowercase();
    name.rsplit_once('.').is_some_and(|(_, ext)| ext == "jar")
        && (name.contains("opentelemetry") || name.contains("otel"))
        && name.contains("agent")
}

/// The file name of an OpenTelemetry Java agent given with `-javaagent:` in `args` (command
/// line arguments, or the words of `JAVA_TOOL_OPTIONS`).
pub fn java_agent<'a>(args: impl IntoIterator<Item = &'a str>) -> Option<String> {
    args.into_iter().find_map(|arg| {
        // -javaagent:<jarpath>[=<options>]
        let jar = arg.strip_prefix("-javaagent:")?.split('=').next()?;
        let name = jar.rsplit('/').next()?;
        is_otel_java_agent(name).then(|| name.to_owned())
    })
}

/// The Java agent as a component; its version when the file name has one
/// (`opentelemetry-javaagent-2.10.0.jar`).
pub fn java_agent_component(file_name: &str) -> Component {
    let stem = file_name
        .strip_suffix(".jar")
        .or_else(|| file_name.strip_suffix(".JAR"))
        .unwrap_or(file_name);
    let version = stem
        .rsplit_once('-')
        .map(|(_, v)| v)
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()) && v.contains('.'))
        .map(str::to_owned);
    Component {
        name: file_name.to_owned(),
        version,
        replaced: None,
        role: Role::Agent,
    }
}

/// OpenTelemetry libraries mapped by a process, from its `/proc/<pid>/maps` text; each once.
pub fn mapped_libraries(maps: &str) -> Vec<Component> {
    let mut found: Vec<Component> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode pathname: the path is the sixth field.
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        let Some(role) = library_role(name) else {
            continue;
        };
        if !found.iter().any(|c| c.name == name) {
            found.push(Component {
                name: name.to_owned(),
                version: None,
                replaced: None,
                role,
            });
        }
    }
    found
}

/// What a library file is, if it is OpenTelemetry's.
fn library_role(name: &str) -> Option<Role> {
    if let Some(rest) = name.strip_prefix("libopentelemetry_") {
        // C++: one library per component, `.so` with an optional version suffix. The OTLP
        // trace exporters are the ones without a `_metric` or `_log` suffix.
        let base = rest.split(".so").next()?;
        return Some(match base {
            "trace" => Role::Sdk,
            "exporter_otlp_http" | "exporter_otlp_grpc" => Role::OtlpTraceExporter,
            b if b.starts_with("exporter_") => Role::OtherExporter,
            _ => Role::Other,
        });
    }
    // .NET: one assembly for the SDK of every signal, so a mapped SDK and exporter do not say
    // that traces were meant to be exported (a metrics-only service maps both).
    let assembly = name.strip_suffix(".dll")?;
    Some(match assembly {
        "OpenTelemetry" => Role::Sdk,
        "OpenTelemetry.Api" => Role::Api,
        a if a.starts_with("OpenTelemetry.Exporter.") => Role::OtherExporter,
        a if a.starts_with("OpenTelemetry.Instrumentation.") => Role::Instrumentation,
        a if a.starts_with("OpenTelemetry.") => Role::Other,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_agents_by_file_name_only() {
        assert_eq!(
            java_agent([
                "java",
                "-Xmx1g",
                "-javaagent:/opt/otel/opentelemetry-javaagent.jar=config=x",
                "-jar",
                "app.jar",
            ]),
            Some("opentelemetry-javaagent.jar".into())
        );
        assert_eq!(
            java_agent(
                "-XX:+UseG1GC -javaagent:/otel-auto-instrumentation-java/javaagent.jar"
                    .split_whitespace()
            ),
            None,
            "a jar not named as OpenTelemetry's is not assumed to be"
        );
        assert_eq!(
            java_agent(["-javaagent:/x/splunk-otel-javaagent-2.10.0.jar"]),
            Some("splunk-otel-javaagent-2.10.0.jar".into())
        );
        assert_eq!(
            java_agent(["-javaagent:/x/jmx_prometheus_javaagent.jar"]),
            None
        );
        assert_eq!(java_agent(["-jar", "opentelemetry-javaagent.jar"]), None);
        let c = java_agent_component("opentelemetry-javaagent-2.10.0.jar");
        assert_eq!(c.version.as_deref(), Some("2.10.0"));
        assert_eq!(c.role, Role::Agent);
        assert_eq!(
            java_agent_component("opentelemetry-javaagent.jar").version,
            None
        );
    }

    #[test]
    fn mapped_libraries_from_maps_text() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1234 /usr/local/bin/server
7f00a0000000-7f00a0100000 r-xp 00000000 08:01 2000 /usr/local/lib/libopentelemetry_trace.so
7f00a0100000-7f00a0200000 r--p 00100000 08:01 2000 /usr/local/lib/libopentelemetry_trace.so
7f00a0300000-7f00a0400000 r-xp 00000000 08:01 2001 /usr/local/lib/libopentelemetry_exporter_otlp_http.so.1.16
7f00a0500000-7f00a0600000 r-xp 00000000 08:01 2002 /usr/local/lib/libopentelemetry_exporter_otlp_http_metric.so
7f00a0700000-7f00a0800000 r--s 00000000 08:01 3000 /app/OpenTelemetry.dll
7f00a0900000-7f00a0a00000 r--s 00000000 08:01 3001 /app/OpenTelemetry.Exporter.OpenTelemetryProtocol.dll
7f00a0b00000-7f00a0c00000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
garbage
";
        let found: Vec<(String, Role)> = mapped_libraries(maps)
            .into_iter()
            .map(|c| (c.name, c.role))
            .collect();
        assert_eq!(
            found,
            [
                ("libopentelemetry_trace.so".into(), Role::Sdk),
                (
                    "libopentelemetry_exporter_otlp_http.so.1.16".into(),
                    Role::OtlpTraceExporter
                ),
                (
                    "libopentelemetry_exporter_otlp_http_metric.so".into(),
                    Role::OtherExporter
                ),
                ("OpenTelemetry.dll".into(), Role::Sdk),
                (
                    "OpenTelemetry.Exporter.OpenTelemetryProtocol.dll".into(),
                    Role::OtherExporter
                ),
            ]
        );
        assert!(mapped_libraries("").is_empty());
    }
}
