//! The reader on real Go executables built here with the Go on PATH (compared with what
//! `go version -m` prints), on hand-made files of the formats this Go cannot write (before 1.18,
//! no section headers), on other files, and on garbage: an answer or an error, never a panic,
//! and only a few KB read.

use std::{
    cell::Cell,
    path::{Path, PathBuf},
    process::Command,
};

use super::*;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tracegap-buildinfo-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

/// `go` offline: the build cache shared with the Go TLS tests, no proxy, no toolchain switch.
fn go(dir: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.current_dir(dir)
        .env("GOCACHE", std::env::temp_dir().join("tracegap-go-cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-buildvcs=false -modcacherw")
        .env("GO111MODULE", "on")
        .env("CGO_ENABLED", "0");
    cmd
}

fn output(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} failed to start ({e}); the tests need `go` on PATH"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A module `example.com/app` that requires `example.com/dep v1.2.3`, replaced by a directory
/// (no network needed), built with `ldflags`.
fn build_app(dir: &Path, ldflags: &str) -> PathBuf {
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write a source file");
    };
    write(
        "app/go.mod",
        "module example.com/app\n\ngo 1.21\n\nrequire example.com/dep v1.2.3\n\n\
         replace example.com/dep => ../dep\n",
    );
    write(
        "app/main.go",
        "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/dep\"\n)\n\n\
         func main() { fmt.Println(dep.Name) }\n",
    );
    write("dep/go.mod", "module example.com/dep\n\ngo 1.21\n");
    write("dep/dep.go", "package dep\n\nvar Name = \"dep\"\n");
    let exe = dir.join(format!("app{}", ldflags.len()));
    output(
        go(&dir.join("app"))
            .args(["build", "-ldflags", ldflags, "-o"])
            .arg(&exe)
            .arg("."),
    );
    exe
}

/// What `go version -m` says: (go version, main module, deps with their replacement).
fn go_version_m(dir: &Path, exe: &Path) -> (String, Option<Module>, Vec<Module>) {
    let text = output(go(dir).args(["version", "-m"]).arg(exe));
    let mut lines = text.lines();
    let version = lines
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .expect("first line: `FILE: goVERSION`")
        .to_owned();
    let parsed = parse_modinfo(version.clone(), text.replace("\n\t", "\n").as_bytes());
    (version, parsed.main, parsed.deps)
}

/// A reader that counts the bytes it hands out.
struct Counting<'a> {
    data: &'a [u8],
    read: Cell<usize>,
}

impl ReadAt for Counting<'_> {
    fn size(&self) -> u64 {
        self.data.size()
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>, BuildInfoError> {
        self.read.set(self.read.get() + len);
        self.data.read_at(offset, len)
    }
}

#[test]
fn real_executables_read_as_go_version_m_prints_them() {
    let dir = TempDir::new("real");
    let toolchain = output(go(&dir.0).args(["env", "GOVERSION"]))
        .trim()
        .to_owned();
    // Plain, and stripped of symbols and DWARF (the build information stays).
    for ldflags in ["", "-s -w"] {
        let exe = build_app(&dir.0, ldflags);
        let (version, main, deps) = go_version_m(&dir.0, &exe);
        assert_eq!(version, toolchain);
        let data = std::fs::read(&exe).expect("read the executable");
        let counting = Counting {
            data: &data,
            read: Cell::new(0),
        };
        let info = read(&counting).expect("readable").expect("a Go executable");
        assert_eq!(info.go_version, toolchain, "{ldflags:?}");
        assert_eq!(info.main, main, "{ldflags:?}");
        assert_eq!(info.deps, deps, "{ldflags:?}");
        assert_eq!(
            info.deps,
            [Module {
                path: "example.com/dep".into(),
                version: "v1.2.3".into(),
                replace: Some(Replacement::Directory),
            }]
        );
        assert!(
            counting.read.get() < 16 * 1024,
            "{} bytes read of a {} byte file",
            counting.read.get(),
            data.len()
        );
        // The same through a file, and the version alone.
        let file = FileReader::new(std::fs::File::open(&exe).expect("open")).expect("size");
        assert_eq!(read(&file).expect("readable"), Some(info));
        assert_eq!(
            go_version(&file).expect("readable"),
            Some(toolchain.clone())
        );
    }
}

#[test]
fn other_files_are_not_go() {
    // This test binary: ELF, built by rustc.
    let me = std::fs::read(std::env::current_exe().expect("own path")).expect("read self");
    assert_eq!(read(me.as_slice()).expect("readable"), None);
    for other in [
        &b"#!/bin/sh\necho hi\n"[..],
        b"",
        b"\x7fELF",
        // Big-endian ELF: not read.
        b"\x7fELF\x02\x02\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
    ] {
        assert_eq!(read(other).expect("not an error"), None);
    }
}

/// Little-endian ELF64 with one writable `PT_LOAD` (the whole file at [`BASE`]), `blob` at
/// [`BLOB_AT`], and with `sections`, a section header table naming it `.go.buildinfo`.
fn elf64(blob: &[u8], sections: bool) -> Vec<u8> {
    let mut f = vec![0u8; BLOB_AT as usize];
    f.extend_from_slice(blob);
    let names = b"\0.go.buildinfo\0.shstrtab\0";
    let names_at = f.len() as u64;
    f.extend_from_slice(names);
    while !f.len().is_multiple_of(8) {
        f.push(0);
    }
    let sh_at = f.len() as u64;
    if sections {
        let mut section = |name: u32, offset: u64, size: u64| {
            let mut s = [0u8; 64];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[4..8].copy_from_slice(&1u32.to_le_bytes());
            s[16..24].copy_from_slice(&(BASE + offset).to_le_bytes());
            s[24..32].copy_from_slice(&offset.to_le_bytes());
            s[32..40].copy_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&s);
        };
        section(0, 0, 0);
        section(1, BLOB_AT, blob.len() as u64);
        section(15, names_at, names.len() as u64);
    }
    let total = f.len() as u64;
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1;
    f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
    f[0x28..0x30].copy_from_slice(&(if sections { sh_at } else { 0 }).to_le_bytes());
    f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    f[0x3c..0x3e].copy_from_slice(&(if sections { 3u16 } else { 0 }).to_le_bytes());
    f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
    let ph = &mut f[0x40..0x40 + 56];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&6u32.to_le_bytes()); // PF_R | PF_W
    ph[16..24].copy_from_slice(&BASE.to_le_bytes());
    ph[32..40].copy_from_slice(&total.to_le_bytes());
    ph[40..48].copy_from_slice(&total.to_le_bytes());
    f
}

const BASE: u64 = 0x40_0000;
const BLOB_AT: u64 = 0x100;
const MODINFO: &str = "path\texample.com/app\nmod\texample.com/app\t(devel)\t\n\
    dep\tgo.opentelemetry.io/otel/sdk\tv1.47.0\n\
    =>\tgo.opentelemetry.io/otel/sdk\tv1.46.0\th1:abc=\n\
    dep\tgo.opentelemetry.io/otel\tv1.47.0\th1:def=\n\
    build\t-ldflags=\"-X main.token=SECRET\"\n";

/// The module text framed by sentinels, as the go command writes it.
fn framed(text: &str) -> Vec<u8> {
    let mut m = vec![0x30; 16];
    m.extend_from_slice(text.as_bytes());
    m.extend_from_slice(&[0xf9; 16]);
    m
}

/// The pre-1.18 blob: pointers to Go string headers, which point at the bytes.
fn pointer_blob(version: &[u8], modinfo: &[u8]) -> Vec<u8> {
    let headers = BASE + BLOB_AT + 32;
    let strings = headers + 32;
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&[8, 0]);
    b.extend_from_slice(&headers.to_le_bytes());
    b.extend_from_slice(&(headers + 16).to_le_bytes());
    b.extend_from_slice(&strings.to_le_bytes());
    b.extend_from_slice(&(version.len() as u64).to_le_bytes());
    b.extend_from_slice(&(strings + version.len() as u64).to_le_bytes());
    b.extend_from_slice(&(modinfo.len() as u64).to_le_bytes());
    b.extend_from_slice(version);
    b.extend_from_slice(modinfo);
    b
}

/// The Go ≥ 1.18 blob: varint-prefixed strings inline.
fn inline_blob(version: &[u8], modinfo: &[u8]) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&[8, 2]);
    b.resize(32, 0);
    for s in [version, modinfo] {
        let mut n = s.len() as u64;
        while n >= 0x80 {
            b.push((n as u8) | 0x80);
            n >>= 7;
        }
        b.push(n as u8);
        b.extend_from_slice(s);
    }
    b
}

fn expected_deps() -> Vec<Module> {
    vec![
        Module {
            path: "go.opentelemetry.io/otel/sdk".into(),
            version: "v1.47.0".into(),
            replace: Some(Replacement::Module {
                path: "go.opentelemetry.io/otel/sdk".into(),
                version: "v1.46.0".into(),
            }),
        },
        Module {
            path: "go.opentelemetry.io/otel".into(),
            version: "v1.47.0".into(),
            replace: None,
        },
    ]
}

#[test]
fn both_formats_with_and_without_section_headers() {
    let modinfo = framed(MODINFO);
    for blob in [
        pointer_blob(b"go1.17.13", &modinfo),
        inline_blob(b"go1.17.13", &modinfo),
    ] {
        for sections in [true, false] {
            let file = elf64(&blob, sections);
            let info = read(file.as_slice())
                .expect("readable")
                .expect("a Go executable");
            assert_eq!(info.go_version, "go1.17.13");
            assert_eq!(info.deps, expected_deps());
            assert_eq!(
                info.main.as_ref().map(|m| m.path.as_str()),
                Some("example.com/app")
            );
            // Build settings are not kept.
            assert!(!format!("{info:?}").contains("SECRET"));
        }
    }
}

#[test]
fn a_long_module_list_is_read_past_the_first_read_and_refused_past_the_limit() {
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!("dep\texample.com/module{i}\tv1.0.{i}\th1:xyz=\n"));
    }
    let file = elf64(&inline_blob(b"go1.26.8", &framed(&text)), false);
    let info = read(file.as_slice()).expect("readable").expect("Go");
    assert_eq!(info.deps.len(), 2000);
    assert_eq!(info.deps[1999].version, "v1.0.1999");

    // A length larger than the limit is refused before anything is read.
    let mut blob = MAGIC.to_vec();
    blob.extend_from_slice(&[8, 2]);
    blob.resize(32, 0);
    blob.extend_from_slice(&[8]);
    blob.extend_from_slice(b"go1.26.8");
    blob.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(matches!(
        read(elf64(&blob, true).as_slice()),
        Err(BuildInfoError::TooLarge { .. })
    ));
}

#[test]
fn module_lines_odd_and_broken() {
    let text = b"mod\texample.com/app\t(devel)\t\n\
        =>\t../app\t(devel)\t\n\
        dep\tgo.opentelemetry.io/otel\n\
        =>\t/abs/otel\t\t\n\
        garbage line\n\
        =>\tgo.opentelemetry.io/otel\tv9.9.9\th1:=\n\
        dep\t\xff\xfe\tv1\n\
        \n\
        dep\tgo.opentelemetry.io/otel/trace\tv1.47.0\th1:x=\textra\n";
    let info = parse_modinfo("go1.26.8".into(), text);
    assert_eq!(
        info.main.and_then(|m| m.replace),
        Some(Replacement::Directory)
    );
    assert_eq!(info.deps.len(), 2, "{:?}", info.deps);
    // A directory, kept without its path; the orphan `=>` after a garbage line is ignored.
    assert_eq!(info.deps[0].replace, Some(Replacement::Directory));
    assert_eq!(info.deps[0].version, "");
    assert_eq!(info.deps[1].version, "v1.47.0");
    assert!(!format!("{:?}", info.deps).contains("/abs/otel"));
}

#[test]
fn garbage_is_an_answer_or_an_error_never_a_panic() {
    let modinfo = framed(MODINFO);
    let files = [
        elf64(&pointer_blob(b"go1.17", &modinfo), false),
        elf64(&inline_blob(b"go1.26.8", &modinfo), true),
    ];
    for file in &files {
        // Every truncation.
        for len in 0..file.len() {
            let _answer: Result<_, _> = read(&file[..len]);
        }
        // Every byte of the headers and the blob set to each of a few values.
        for at in 0..file.len().min(BLOB_AT as usize + 128) {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = file.clone();
                bad[at] = value;
                let _answer: Result<_, _> = read(bad.as_slice());
            }
        }
    }
    // Pseudo-random files with an ELF header (xorshift, fixed seed).
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..2000 {
        let mut f: Vec<u8> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let _answer: Result<_, _> = read(f.as_slice());
    }
}

#[test]
fn uvarints() {
    assert_eq!(uvarint(&[8, 0xff]), Some((8, 1)));
    assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
    assert_eq!(uvarint(&[0x80]), None);
    assert_eq!(uvarint(&[0xff; 11]), None);
}
