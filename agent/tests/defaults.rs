//! Security defaults of the command line: receivers on loopback, paths templated in exports,
//! receiver limits on.

use agent::cli::{Args, Switch};
use clap::Parser as _;

#[test]
fn receivers_bind_loopback_and_exports_template_paths_by_default() {
    let args = Args::parse_from(["tracegap"]).watch;
    let agent = &args.agent;
    for addr in [agent.otlp_grpc_listen, agent.otlp_http_listen] {
        let addr = addr.expect("a receiver is on by default");
        assert!(addr.ip().is_loopback(), "{addr} is not loopback");
    }
    assert_eq!(args.path_template, Switch::On);
    assert_eq!(agent.otlp_max_message_bytes, 16 * 1024 * 1024);
    assert_eq!(agent.otlp_max_connections, 256);
    assert_eq!(agent.otlp_header_timeout.as_secs(), 10);
    assert_eq!(agent.otlp_body_timeout.as_secs(), 30);
}

#[test]
fn check_mode_receivers_bind_loopback_too() {
    let Some(agent::cli::Command::Check(check)) =
        Args::parse_from(["tracegap", "check", "--", "true"]).command
    else {
        panic!("a check");
    };
    for addr in [check.agent.otlp_grpc_listen, check.agent.otlp_http_listen] {
        assert!(addr.expect("on by default").ip().is_loopback());
    }
}

#[test]
fn receiver_limits_are_validated() {
    for bad in [
        ["tracegap", "--otlp-max-connections", "0"],
        ["tracegap", "--otlp-max-message-bytes", "0"],
        ["tracegap", "--otlp-header-timeout", "0s"],
        ["tracegap", "--otlp-body-timeout", "1500ms"],
        ["tracegap", "--path-template", "maybe"],
    ] {
        assert!(Args::try_parse_from(bad).is_err(), "{bad:?} was accepted");
    }
    let args = Args::parse_from(["tracegap", "--path-template", "off"]);
    assert_eq!(args.watch.path_template, Switch::Off);
}
