//! Go executables built here, plain and stripped: the functions and their returns are found.

use std::process::Command;

use super::*;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tracegap-gotls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

/// `go` with the build cache in a temporary directory (kept between runs: building
/// net/http from nothing takes a while), no modules and no toolchain downloads. Same
/// settings as tests/tests/tls.rs.
fn go(dir: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.env("GOCACHE", std::env::temp_dir().join("tracegap-go-cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        // A pure Go build: no C compiler needed, and how Go services usually ship.
        .env("CGO_ENABLED", "0");
    cmd
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?} failed to start ({e}); `cargo xtask setup` installs golang-go")
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Builds tests/fixtures/go_tls (a net/http client and server) with these ldflags.
fn build(dir: &Path, name: &str, ldflags: &str) -> PathBuf {
    let exe = dir.join(name);
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/go_tls/main.go"
    );
    output(
        go(dir)
            .args(["build", "-ldflags", ldflags, "-o"])
            .arg(&exe)
            .arg(source),
    );
    exe
}

/// Addresses of `names` according to `go tool nm`.
fn nm(dir: &Path, exe: &Path, names: [&str; 2]) -> [u64; 2] {
    let text = output(go(dir).args(["tool", "nm"]).arg(exe));
    names.map(|name| {
        text.lines()
            .find_map(|line| {
                let mut f = line.split_whitespace();
                let (addr, _kind, sym) = (f.next()?, f.next()?, f.next()?);
                (sym == name).then(|| u64::from_str_radix(addr, 16).ok())?
            })
            .unwrap_or_else(|| panic!("go tool nm lists no {name}:\n{text}"))
    })
}

#[test]
fn finds_the_tls_functions_of_go_executables_stripped_or_not() {
    let dir = TempDir::new("unit");
    let plain = build(&dir.0, "plain", "");
    let stripped = build(&dir.0, "stripped", "-s -w");
    let [write, read] = nm(&dir.0, &plain, [WRITE_FN, READ_FN]);
    let version = output(go(&dir.0).args(["env", "GOVERSION"]));

    for exe in [&plain, &stripped] {
        let data = std::fs::read(exe).expect("read the Go executable");
        let go = match inspect(&data) {
            Ok(Inspection::Probe(go)) => go,
            other => panic!("{}: {other:?}", exe.display()),
        };
        assert_eq!(go.version, version.trim(), "{}", exe.display());
        assert_eq!(
            (go.write.address, go.read.address),
            (write, read),
            "{} (go tool nm of the unstripped build: {write:#x} {read:#x})",
            exe.display()
        );
        assert!(!go.read_returns.is_empty());
        for offset in &go.read_returns {
            let at = usize::try_from(*offset).expect("offset");
            assert_eq!(data[at], 0xc3, "RET at file offset {offset:#x}");
            assert!(*offset > go.read.file_offset);
            assert!(*offset < go.read.file_offset + go.read.size);
        }
    }

    // The stripped build has no symbol table: its functions came from the pclntab. In the
    // plain build the pclntab must agree with the symbol table.
    let data = std::fs::read(&stripped).expect("read");
    let obj = object::File::parse(&*data).expect("ELF");
    assert!(obj.symbols().all(|s| s.name() != Ok(WRITE_FN)));
    let data = std::fs::read(&plain).expect("read");
    let obj = object::File::parse(&*data).expect("ELF");
    let section = obj.section_by_name(".gopclntab").expect(".gopclntab");
    let text = obj.section_by_name(".text").expect(".text").address();
    let table = Pclntab::parse(section.data().expect("data"), text).expect("pclntab");
    let found = table.find(&[WRITE_FN, READ_FN]).expect("find");
    assert_eq!(
        found.map(|f| f.map(|(entry, _)| entry)),
        [Some(write), Some(read)]
    );
}

#[test]
fn go_minor_versions() {
    assert_eq!(go_minor("go1.19.8"), Some(19));
    assert_eq!(go_minor("go1.21rc2"), Some(21));
    assert_eq!(go_minor("go1.16"), Some(16));
    assert_eq!(go_minor("devel go1.23-abcdef"), None);
}

#[test]
fn non_go_files_are_not_go() {
    let exe = std::fs::read("/proc/self/exe").expect("read own executable");
    assert_eq!(inspect(&exe).expect("an ELF file"), Inspection::NotGo);
}
