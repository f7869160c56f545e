//! The folder executor on real files (`spec/files.md` § Local state, § Applying).

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use clearskies_proto::files::chunker::{chunk_lengths, class_for};
use clearskies_proto::files::{ChunkRef, FileKind, FileMeta};
use clearskies_store::{Folder, FolderError, LocalChange};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// A share folder and its index, both in one temp dir (the index outside the folder).
struct Fixture {
    _dir: TempDir,
    root: PathBuf,
    index: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("share");
    fs::create_dir(&root).expect("mkdir");
    let index = dir.path().join("index.redb");
    Fixture {
        _dir: dir,
        root,
        index,
    }
}

impl Fixture {
    fn open(&self) -> Folder {
        Folder::open(&self.root, &self.index).expect("open")
    }

    fn write(&self, path: &str, data: &[u8]) {
        let p = self.root.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, data).expect("write");
    }

    /// The folder holding `path` with `data`, opened and scanned once.
    fn scanned_with(&self, path: &str, data: &[u8]) -> Folder {
        self.write(path, data);
        let mut folder = self.open();
        folder.scan().expect("scan");
        folder
    }

    fn read(&self, path: &str) -> Vec<u8> {
        fs::read(self.root.join(path)).expect("read")
    }
}

/// Pseudo-random bytes (xorshift), enough for several chunks.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The metadata a peer would send for `data`.
fn file_meta(data: &[u8], mode: u32, mtime_ns: i64) -> FileMeta {
    let mut chunks = Vec::new();
    let mut at = 0;
    for len in chunk_lengths(data, class_for(data.len() as u64)) {
        let piece = &data[at..at + len as usize];
        chunks.push(ChunkRef(Sha256::digest(piece).into(), len));
        at += len as usize;
    }
    FileMeta {
        kind: FileKind::File,
        mode,
        mtime_ns,
        size: data.len() as u64,
        chunks,
        target: None,
        conflict_of: None,
    }
}

fn chunk_data<'a>(data: &'a [u8], meta: &FileMeta) -> Vec<(&'a [u8], [u8; 32])> {
    let mut at = 0;
    meta.chunks
        .iter()
        .map(|c| {
            let piece = &data[at..at + c.len() as usize];
            at += c.len() as usize;
            (piece, *c.hash())
        })
        .collect()
}

fn change<'a>(changes: &'a [LocalChange], path: &str) -> &'a LocalChange {
    changes
        .iter()
        .find(|c| c.path == path)
        .unwrap_or_else(|| panic!("no change for {path} in {changes:?}"))
}

fn paths(changes: &[LocalChange]) -> Vec<&str> {
    changes.iter().map(|c| c.path.as_str()).collect()
}

fn set_mtime(path: &Path, ns: i64) {
    let t = UNIX_EPOCH + Duration::from_nanos(ns as u64);
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_times(FileTimes::new().set_modified(t)))
        .expect("set mtime");
}

#[test]
fn scan_reports_files_dirs_and_symlinks() {
    let fx = fixture();
    let big = noise(1, 300_000);
    fx.write("a.txt", b"hello");
    fx.write("empty", b"");
    fx.write("nested/deeper/big.bin", &big);
    fx.write("ro.txt", b"read only");
    fs::set_permissions(fx.root.join("ro.txt"), fs::Permissions::from_mode(0o400)).expect("chmod");
    set_mtime(&fx.root.join("a.txt"), 1_600_000_000_123_456_789);
    fs::create_dir(fx.root.join("empty-dir")).expect("mkdir");
    symlink("../../outside/target", fx.root.join("link")).expect("symlink");
    let mut folder = fx.open();
    let changes = folder.scan().expect("scan");
    assert_eq!(
        paths(&changes),
        [
            "a.txt",
            "empty",
            "empty-dir",
            "link",
            "nested",
            "nested/deeper",
            "nested/deeper/big.bin",
            "ro.txt"
        ]
    );
    let a = change(&changes, "a.txt").meta.clone().expect("present");
    assert_eq!(a.kind, FileKind::File);
    assert_eq!(a.size, 5);
    assert_eq!(a.mtime_ns, 1_600_000_000_123_456_789);
    assert_eq!(a.chunks, vec![ChunkRef(Sha256::digest(b"hello").into(), 5)]);
    let empty = change(&changes, "empty").meta.clone().expect("present");
    assert_eq!((empty.size, empty.chunks.len()), (0, 0));
    let ro = change(&changes, "ro.txt").meta.clone().expect("present");
    assert_eq!(ro.mode, 0o400);
    let dir = change(&changes, "empty-dir").meta.clone().expect("present");
    assert_eq!((dir.kind, dir.size), (FileKind::Dir, 0));
    let link = change(&changes, "link").meta.clone().expect("present");
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(link.target.as_deref(), Some("../../outside/target"));
    let big_meta = change(&changes, "nested/deeper/big.bin")
        .meta
        .clone()
        .expect("present");
    assert_eq!(big_meta, file_meta(&big, big_meta.mode, big_meta.mtime_ns));
    assert!(big_meta.chunks.len() > 1);
    for meta in changes.iter().filter_map(|c| c.meta.as_ref()) {
        assert_eq!(meta.check(), Ok(()));
    }
    assert_eq!(folder.local("a.txt").expect("local"), Some(a));
    // The chunk index answers for every chunk, and the pieces are right.
    for (piece, hash) in chunk_data(&big, &big_meta) {
        assert!(folder.has_chunk(&hash).expect("has"));
        let got = folder
            .read_chunk(&hash, 0, piece.len() as u32)
            .expect("read");
        assert_eq!(got.as_deref(), Some(piece));
        let got = folder.read_chunk(&hash, 10, 100).expect("read piece");
        assert_eq!(got.as_deref(), Some(&piece[10..110]));
        assert_eq!(
            folder
                .read_chunk(&hash, piece.len() as u32 - 1, 2)
                .expect("read"),
            None
        );
    }
}

#[test]
fn rescan_reports_only_changes() {
    let fx = fixture();
    fx.write("a", b"one");
    fx.write("b", b"two");
    fx.write("d/c", b"three");
    let mut folder = fx.open();
    assert_eq!(folder.scan().expect("scan").len(), 4);
    assert_eq!(folder.scan().expect("rescan"), vec![]);

    fx.write("a", b"one, changed");
    fs::remove_file(fx.root.join("b")).expect("rm");
    let changes = folder.scan().expect("scan");
    assert_eq!(paths(&changes), ["a", "b"]);
    let a = change(&changes, "a").meta.as_ref().expect("present");
    assert_eq!(
        a.chunks,
        vec![ChunkRef(Sha256::digest(b"one, changed").into(), 12)]
    );
    assert_eq!(change(&changes, "b").meta, None);
    assert_eq!(folder.local("b").expect("local"), None);

    // A mode change alone is a change; a new inode with the same state is not.
    fs::set_permissions(fx.root.join("a"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let changes = folder.scan().expect("scan");
    assert_eq!(paths(&changes), ["a"]);
    assert_eq!(change(&changes, "a").meta.as_ref().expect("a").mode, 0o600);
    let m = fs::metadata(fx.root.join("d/c")).expect("stat");
    fs::copy(fx.root.join("d/c"), fx.root.join("copy")).expect("copy");
    fs::rename(fx.root.join("copy"), fx.root.join("d/c")).expect("replace");
    set_mtime(
        &fx.root.join("d/c"),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    );
    fs::set_permissions(
        fx.root.join("d/c"),
        fs::Permissions::from_mode(m.mode() & 0o7777),
    )
    .expect("chmod");
    let changes = folder.scan().expect("scan");
    // Neither the file (same content, mode and mtime) nor the directory (its mtime moved
    // because an entry was renamed into it, which is not a change of the directory).
    assert_eq!(changes, vec![]);
}

#[test]
fn rename_is_delete_plus_create_with_same_chunks() {
    let fx = fixture();
    let data = noise(2, 200_000);
    fx.write("old.bin", &data);
    let mut folder = fx.open();
    let first = folder.scan().expect("scan");
    let old = change(&first, "old.bin").meta.clone().expect("present");
    fs::rename(fx.root.join("old.bin"), fx.root.join("new.bin")).expect("mv");
    let changes = folder.scan().expect("scan");
    assert_eq!(paths(&changes), ["new.bin", "old.bin"]);
    assert_eq!(change(&changes, "old.bin").meta, None);
    let new = change(&changes, "new.bin").meta.clone().expect("present");
    assert_eq!(new.chunks, old.chunks);
    // The chunks are now served from the new name.
    for c in &new.chunks {
        assert!(folder.read_chunk(c.hash(), 0, 1).expect("read").is_some());
    }
}

#[test]
fn ignore_file_is_honoured_and_synced() {
    let fx = fixture();
    fx.write(".clearskiesignore", b"*.tmp\nbuild/\n!keep.tmp\n");
    fx.write("a.tmp", b"x");
    fx.write("keep.tmp", b"x");
    fx.write("build/out.o", b"x");
    fx.write("src/main.rs", b"fn main() {}");
    fx.write("src/scratch.tmp", b"x");
    let mut folder = fx.open();
    fx.write(".clearskies/tmp/leftover.part", b"never synced");
    let changes = folder.scan().expect("scan");
    assert_eq!(
        paths(&changes),
        [".clearskiesignore", "keep.tmp", "src", "src/main.rs"]
    );
    // Ignoring a path that was synced forgets it without reporting a deletion.
    fx.write(".clearskiesignore", b"*.tmp\nbuild/\n!keep.tmp\nsrc/\n");
    let changes = folder.scan().expect("scan");
    assert_eq!(paths(&changes), [".clearskiesignore"]);
    assert_eq!(folder.local("src/main.rs").expect("local"), None);
}

#[test]
fn stage_and_commit_from_local_chunks_only() {
    let fx = fixture();
    let data = noise(3, 250_000);
    let mut folder = fx.scanned_with("src.bin", &data);
    let meta = file_meta(&data, 0o640, 1_500_000_000_987_654_321);
    let staging = folder.stage("copies/dst.bin", &meta).expect("stage");
    assert!(staging.is_complete(), "every chunk is local");
    assert_eq!(staging.missing().count(), 0);
    folder.commit(staging, None).expect("commit");
    assert_eq!(fx.read("copies/dst.bin"), data);
    let m = fs::metadata(fx.root.join("copies/dst.bin")).expect("stat");
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        1_500_000_000_987_654_321
    );
    assert_eq!(folder.local("copies/dst.bin").expect("local"), Some(meta));
    // What was applied is not reported back as a local change; the new parent is.
    assert_eq!(paths(&folder.scan().expect("scan")), ["copies"]);
    assert_eq!(
        fs::read_dir(fx.root.join(".clearskies/tmp"))
            .expect("tmp")
            .count(),
        0
    );
}

#[test]
fn stage_and_commit_from_written_chunks_with_repeats() {
    let fx = fixture();
    // Constant bytes cut at the maximum chunk length: the same chunk at several offsets.
    let data = [vec![7u8; 600_000].as_slice(), &noise(5, 150_000)].concat();
    let meta = file_meta(&data, 0o755, 1_234_567_890_000_000_001);
    let mut folder = fx.open();
    folder.scan().expect("scan");
    let mut staging = folder.stage("x/run.sh", &meta).expect("stage");
    let distinct: std::collections::BTreeSet<_> = meta.chunks.iter().map(|c| *c.hash()).collect();
    assert_eq!(staging.missing().count(), distinct.len());
    assert!(distinct.len() < meta.chunks.len(), "repeats dedupe");
    assert!(matches!(
        folder.write_chunk(&mut staging, &meta.chunks[0].0, b"wrong"),
        Err(FolderError::BadMeta { .. })
    ));
    for (piece, hash) in chunk_data(&data, &meta) {
        folder
            .write_chunk(&mut staging, &hash, piece)
            .expect("write");
    }
    assert!(staging.is_complete());
    folder.commit(staging, None).expect("commit");
    assert_eq!(fx.read("x/run.sh"), data);
    let m = fs::metadata(fx.root.join("x/run.sh")).expect("stat");
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!(
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        1_234_567_890_000_000_001
    );

    // Replacing it with new content, expecting what was indexed.
    let data2 = noise(6, 10_000);
    let meta2 = file_meta(&data2, 0o644, 1_700_000_000_000_000_000);
    let mut staging = folder.stage("x/run.sh", &meta2).expect("stage");
    for (piece, hash) in chunk_data(&data2, &meta2) {
        folder
            .write_chunk(&mut staging, &hash, piece)
            .expect("write");
    }
    folder.commit(staging, Some(&meta)).expect("commit over");
    assert_eq!(fx.read("x/run.sh"), data2);
}

#[test]
fn empty_file_commits() {
    let fx = fixture();
    let mut folder = fx.open();
    let meta = file_meta(b"", 0o600, 0);
    let staging = folder.stage("e", &meta).expect("stage");
    assert!(staging.is_complete());
    folder.commit(staging, None).expect("commit");
    assert_eq!(fx.read("e"), b"");
    assert_eq!(folder.local("e").expect("local"), Some(meta));
}

/// A large file alone in a scan is hashed on several threads (chunks found on one, hashed on
/// others) and gets exactly the chunk list a single pass gives; staging a changed version of
/// it copies the unchanged chunks on several threads, verified, and leaves only the changed
/// ones missing, including a corrupted local copy's.
#[test]
fn a_large_file_is_hashed_and_staged_on_several_threads_with_the_same_result() {
    let fx = fixture();
    let data = noise(11, 40 << 20);
    fx.write("big.bin", &data);
    let mut folder = fx.open();
    let changes = folder.scan().expect("scan");
    let meta = change(&changes, "big.bin").meta.clone().expect("present");
    let expected = file_meta(&data, meta.mode, meta.mtime_ns);
    assert_eq!(meta.chunks, expected.chunks);
    assert!(meta.chunks.len() > 300);

    // A new version: 1 % overwritten in the middle.
    let mut changed = data.clone();
    let middle = changed.len() / 2;
    for b in &mut changed[middle..middle + (400 << 10)] {
        *b ^= 0x5a;
    }
    let new_meta = file_meta(&changed, 0o644, 1_700_000_000_000_000_000);
    let new_pieces = chunk_data(&changed, &new_meta);
    let fresh: Vec<[u8; 32]> = new_pieces
        .iter()
        .map(|(_, h)| *h)
        .filter(|h| !meta.chunks.iter().any(|c| c.hash() == h))
        .collect();
    assert!(!fresh.is_empty() && fresh.len() < 20, "{}", fresh.len());
    let mut staging = folder.stage("big.bin", &new_meta).expect("stage");
    let mut missing: Vec<[u8; 32]> = staging.missing().copied().collect();
    missing.sort_unstable();
    let mut want = fresh.clone();
    want.sort_unstable();
    want.dedup();
    assert_eq!(missing, want, "only the changed chunks are fetched");
    for (piece, hash) in &new_pieces {
        if missing.contains(hash) {
            folder
                .write_chunk(&mut staging, hash, piece)
                .expect("write");
        }
    }
    folder.commit(staging, Some(&meta)).expect("commit");
    assert_eq!(fx.read("big.bin"), changed);

    // The local copy is corrupted behind the index's back: its chunks are not copied.
    let mut corrupt = changed.clone();
    corrupt[10] ^= 1;
    fs::write(fx.root.join("big.bin"), &corrupt).expect("write");
    let staging = folder.stage("copy.bin", &new_meta).expect("stage");
    let missing: Vec<[u8; 32]> = staging.missing().copied().collect();
    assert_eq!(
        missing,
        [new_pieces[0].1],
        "only the corrupted chunk is missing"
    );
}

#[test]
fn restart_resumes_a_partly_written_temp_file() {
    let fx = fixture();
    let data = noise(7, 400_000);
    let meta = file_meta(&data, 0o644, 1_000_000_000);
    assert!(meta.chunks.len() >= 3);
    let pieces = chunk_data(&data, &meta);
    {
        let mut folder = fx.open();
        let mut staging = folder.stage("f.bin", &meta).expect("stage");
        folder
            .write_chunk(&mut staging, &pieces[0].1, pieces[0].0)
            .expect("write");
        folder
            .write_chunk(&mut staging, &pieces[2].1, pieces[2].0)
            .expect("write");
        // Crash: the staging and the folder are dropped without a commit.
    }
    let mut folder = fx.open();
    let mut staging = folder.stage("f.bin", &meta).expect("stage again");
    let missing: Vec<[u8; 32]> = staging.missing().copied().collect();
    assert_eq!(missing.len(), meta.chunks.len() - 2);
    assert!(!missing.contains(&pieces[0].1) && !missing.contains(&pieces[2].1));
    for (piece, hash) in &pieces {
        if missing.contains(hash) {
            folder
                .write_chunk(&mut staging, hash, piece)
                .expect("write");
        }
    }
    folder.commit(staging, None).expect("commit");
    assert_eq!(fx.read("f.bin"), data);
}

#[test]
fn local_change_between_scan_and_commit_is_refused() {
    let fx = fixture();
    let mut folder = fx.scanned_with("doc.txt", b"version 1");
    let indexed = folder.local("doc.txt").expect("local").expect("indexed");
    // The user edits the file after the scan; a remote version arrives.
    fx.write("doc.txt", b"version 2, local");
    let remote = file_meta(b"remote", 0o644, 5);
    let mut staging = folder.stage("doc.txt", &remote).expect("stage");
    let (piece, hash) = chunk_data(b"remote", &remote)[0];
    folder
        .write_chunk(&mut staging, &hash, piece)
        .expect("write");
    let err = folder
        .commit(staging, Some(&indexed))
        .expect_err("local change");
    assert!(
        matches!(err, FolderError::LocalChange { ref path } if path == "doc.txt"),
        "{err}"
    );
    assert_eq!(fx.read("doc.txt"), b"version 2, local");
    assert_eq!(
        fs::read_dir(fx.root.join(".clearskies/tmp"))
            .expect("tmp")
            .count(),
        0,
        "the refused temp file is gone"
    );
    // Expecting nothing where something exists is a local change too.
    let mut staging = folder.stage("doc.txt", &remote).expect("stage");
    folder
        .write_chunk(&mut staging, &hash, piece)
        .expect("write");
    assert!(matches!(
        folder.commit(staging, None),
        Err(FolderError::LocalChange { .. })
    ));
    // And for the other operations.
    assert!(matches!(
        folder.remove("doc.txt", Some(&indexed)),
        Err(FolderError::LocalChange { .. })
    ));
    let dir = FileMeta {
        kind: FileKind::Dir,
        mode: 0o755,
        mtime_ns: 0,
        size: 0,
        chunks: vec![],
        target: None,
        conflict_of: None,
    };
    assert!(matches!(
        folder.apply_dir("doc.txt", &dir, Some(&indexed)),
        Err(FolderError::LocalChange { .. })
    ));
    assert_eq!(fx.read("doc.txt"), b"version 2, local");
}

#[test]
fn traversal_paths_are_refused() {
    let fx = fixture();
    let mut folder = fx.open();
    let meta = file_meta(b"evil", 0o644, 0);
    for path in [
        "../x",
        "/etc/x",
        "a/../../x",
        ".clearskies/tmp/x",
        "a//b",
        "",
    ] {
        let err = folder.stage(path, &meta).expect_err(path);
        assert!(
            matches!(err, FolderError::UnsafePath { .. }),
            "{path}: {err}"
        );
        assert!(matches!(
            folder.remove(path, None),
            Err(FolderError::UnsafePath { .. })
        ));
    }
    assert!(!fx.root.parent().expect("parent").join("x").exists());
}

#[test]
fn a_symlinked_parent_is_never_written_through() {
    let fx = fixture();
    let outside = fx.root.parent().expect("parent").join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("victim"), b"keep me").expect("write");
    symlink(&outside, fx.root.join("link")).expect("symlink");
    let mut folder = fx.open();
    folder.scan().expect("scan");

    let meta = file_meta(b"evil", 0o644, 0);
    let err = folder.stage("link/new", &meta).expect_err("stage");
    assert!(matches!(err, FolderError::UnsafePath { .. }), "{err}");
    assert!(err.to_string().contains("symlink"), "{err}");
    let dir = FileMeta {
        kind: FileKind::Dir,
        mode: 0o755,
        mtime_ns: 0,
        size: 0,
        chunks: vec![],
        target: None,
        conflict_of: None,
    };
    assert!(matches!(
        folder.apply_dir("link/d", &dir, None),
        Err(FolderError::UnsafePath { .. })
    ));
    assert!(matches!(
        folder.remove("link/victim", None),
        Err(FolderError::UnsafePath { .. })
    ));
    // The parent turns into a symlink between stage and commit.
    fs::create_dir(fx.root.join("real")).expect("mkdir");
    let mut staging = folder.stage("real/new", &meta).expect("stage");
    let (piece, hash) = chunk_data(b"evil", &meta)[0];
    folder
        .write_chunk(&mut staging, &hash, piece)
        .expect("write");
    fs::remove_dir(fx.root.join("real")).expect("rmdir");
    symlink(&outside, fx.root.join("real")).expect("symlink");
    assert!(matches!(
        folder.commit(staging, None),
        Err(FolderError::UnsafePath { .. })
    ));
    assert_eq!(fs::read(outside.join("victim")).expect("read"), b"keep me");
    assert_eq!(fs::read_dir(&outside).expect("ls").count(), 1);
    // Reading never follows it either: the outside file's chunk is not served.
    fs::write(outside.join("secret"), b"secret").expect("write");
    assert_eq!(
        folder
            .read_chunk(&Sha256::digest(b"secret").into(), 0, 6)
            .expect("read"),
        None
    );
}

#[test]
fn read_chunk_verifies_the_disk() {
    let fx = fixture();
    let folder = fx.scanned_with("f", b"original content");
    let hash: [u8; 32] = Sha256::digest(b"original content").into();
    assert!(folder.read_chunk(&hash, 0, 16).expect("read").is_some());
    // Changed behind the index's back (same size): no longer served.
    fx.write("f", b"modified content");
    assert_eq!(folder.read_chunk(&hash, 0, 16).expect("read"), None);
}

/// A file the quick check vouches for, last modified long ago, is served by range: every
/// piece of every chunk comes back as indexed, and a range past a chunk's end is refused.
#[test]
fn read_chunk_serves_ranges_of_a_settled_file() {
    let fx = fixture();
    let data = noise(7, 600_000);
    fx.write("big", &data);
    set_mtime(&fx.root.join("big"), 1_600_000_000_000_000_000);
    let mut folder = fx.open();
    let changes = folder.scan().expect("scan");
    let meta = change(&changes, "big").meta.clone().expect("present");
    assert!(meta.chunks.len() > 1);
    for (piece, hash) in chunk_data(&data, &meta) {
        let len = piece.len() as u32;
        let got = folder.read_chunk(&hash, 0, len).expect("read");
        assert_eq!(got.as_deref(), Some(piece));
        let got = folder
            .read_chunk(&hash, len / 2, len - len / 2)
            .expect("read");
        assert_eq!(got.as_deref(), Some(&piece[piece.len() / 2..]));
        assert_eq!(folder.read_chunk(&hash, len - 1, 2).expect("read"), None);
        assert_eq!(folder.read_chunk(&hash, u32::MAX, 2).expect("read"), None);
    }
    // Changed since the scan (the quick check sees it): no longer served.
    let mut changed = data.clone();
    changed[0] ^= 1;
    fx.write("big", &changed);
    let (_, first) = chunk_data(&data, &meta)[0];
    assert_eq!(folder.read_chunk(&first, 0, 16).expect("read"), None);
}

/// A write in the same timestamp tick as the scan leaves size and mtime as they were, so the
/// quick check cannot see it: while the file is that recent, the chunk is hashed before it is
/// served, and the changed bytes are not.
#[test]
fn a_change_the_quick_check_cannot_see_is_caught_while_the_file_is_recent() {
    let fx = fixture();
    let folder = fx.scanned_with("f", b"original content");
    let before = fs::metadata(fx.root.join("f")).expect("stat");
    fx.write("f", b"modified content");
    let mtime_ns = before.mtime() * 1_000_000_000 + before.mtime_nsec();
    set_mtime(&fx.root.join("f"), mtime_ns);
    let after = fs::metadata(fx.root.join("f")).expect("stat");
    assert_eq!(
        (after.ino(), after.len(), after.mtime(), after.mtime_nsec()),
        (
            before.ino(),
            before.len(),
            before.mtime(),
            before.mtime_nsec()
        ),
        "the quick check sees no change"
    );
    let hash: [u8; 32] = Sha256::digest(b"original content").into();
    assert_eq!(folder.read_chunk(&hash, 0, 16).expect("read"), None);
}

/// Many directories applied together: each is made with its mode and mtime and indexed;
/// one whose path holds a file edited since the scan is refused on its own, and one under a
/// file cannot be made, without holding back the others.
#[test]
fn many_directories_apply_together_and_each_gets_its_own_result() {
    let fx = fixture();
    fx.write("edited", b"a file where a directory is wanted");
    let mut folder = fx.scanned_with("plain", b"a file, not a directory");
    let indexed = folder.local("edited").expect("local").expect("indexed");
    fx.write("edited", b"changed after the scan");
    let dir = |mode: u32, mtime_ns: i64| FileMeta {
        kind: FileKind::Dir,
        mode,
        mtime_ns,
        size: 0,
        chunks: vec![],
        target: None,
        conflict_of: None,
    };
    let mut items: Vec<(String, FileMeta, Option<FileMeta>)> = (0..30)
        .map(|i| (format!("d{i:02}"), dir(0o750, 1_000_000_000 + i), None))
        .collect();
    items.push(("d05/inner".into(), dir(0o700, 2_000_000_000), None));
    items.push(("edited".into(), dir(0o755, 3_000_000_000), Some(indexed)));
    items.push(("plain/under".into(), dir(0o755, 4_000_000_000), None));
    let results = folder.apply_dirs(items.clone());
    assert_eq!(results.len(), items.len());
    for ((path, meta, _), result) in items.iter().zip(&results) {
        match path.as_str() {
            "edited" => assert!(
                matches!(result, Err(FolderError::LocalChange { .. })),
                "{result:?}"
            ),
            "plain/under" => assert!(result.is_err(), "made under a file"),
            _ => {
                result.as_ref().expect("made");
                let m = fs::symlink_metadata(fx.root.join(path)).expect("stat");
                assert!(m.is_dir());
                assert_eq!(m.mode() & 0o7777, meta.mode);
                assert_eq!(folder.local(path).expect("local"), Some(meta.clone()));
            }
        }
    }
    assert_eq!(fx.read("edited"), b"changed after the scan");
    assert_eq!(fx.read("plain"), b"a file, not a directory");
}

#[test]
fn dirs_symlinks_and_removal() {
    let fx = fixture();
    let mut folder = fx.open();
    let dir = FileMeta {
        kind: FileKind::Dir,
        mode: 0o750,
        mtime_ns: 1_111_111_111_222_222_222,
        size: 0,
        chunks: vec![],
        target: None,
        conflict_of: None,
    };
    folder.apply_dir("a/b", &dir, None).expect("dir");
    let m = fs::symlink_metadata(fx.root.join("a/b")).expect("stat");
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o7777, 0o750);
    assert_eq!(
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        1_111_111_111_222_222_222
    );
    // Applying it again over the existing directory is fine.
    folder.apply_dir("a/b", &dir, Some(&dir)).expect("again");

    let target = "../../../outside/on/purpose";
    let link = FileMeta {
        kind: FileKind::Symlink,
        mode: 0o777,
        mtime_ns: 0,
        size: target.len() as u64,
        chunks: vec![],
        target: Some(target.into()),
        conflict_of: None,
    };
    folder.apply_symlink("a/b/l", &link, None).expect("symlink");
    assert_eq!(
        fs::read_link(fx.root.join("a/b/l")).expect("readlink"),
        Path::new(target)
    );
    let changes = folder.scan().expect("scan");
    // Only what we did not apply ourselves: "a" (created as a parent). a/b's mtime moved when
    // the link was made inside it, which is not a change of a/b.
    assert_eq!(paths(&changes), ["a"]);

    // A directory that still holds an ignored file is left in place.
    fx.write(".clearskiesignore", b"*.o\n");
    fx.write("a/b/x.o", b"object");
    folder.scan().expect("scan");
    let indexed_link = folder.local("a/b/l").expect("local");
    folder
        .remove("a/b/l", indexed_link.as_ref())
        .expect("rm link");
    assert!(fs::symlink_metadata(fx.root.join("a/b/l")).is_err());
    let indexed_dir = folder.local("a/b").expect("local");
    folder
        .remove("a/b", indexed_dir.as_ref())
        .expect("rm dir kept");
    assert!(fx.root.join("a/b/x.o").exists());
    assert_eq!(folder.scan().expect("scan"), vec![]);
    fs::remove_file(fx.root.join("a/b/x.o")).expect("rm");
    let indexed_dir = folder.local("a/b").expect("local");
    folder.remove("a/b", indexed_dir.as_ref()).expect("rm dir");
    assert!(!fx.root.join("a/b").exists());
    // Removing what is already gone is fine.
    folder.remove("a/b", None).expect("gone");
}

#[test]
fn missing_root_never_reports_deletions() {
    let fx = fixture();
    fx.write("a", b"1");
    assert!(matches!(
        Folder::open(&fx.root.join("nope"), &fx.index),
        Err(FolderError::RootMissing { .. })
    ));
    let mut folder = fx.open();
    folder.scan().expect("scan");
    fs::remove_dir_all(&fx.root).expect("rm root");
    let err = folder.scan().expect_err("root missing");
    assert!(matches!(err, FolderError::RootMissing { .. }), "{err}");
    assert!(err.to_string().contains("nothing is deleted"), "{err}");
    assert!(folder.local("a").expect("local").is_some());
    let meta = file_meta(b"x", 0o644, 0);
    assert!(matches!(
        folder.stage("b", &meta),
        Err(FolderError::RootMissing { .. })
    ));

    // An empty folder where an indexed one was (an unmounted mount point).
    fs::create_dir(&fx.root).expect("mkdir");
    drop(folder);
    let mut folder = fx.open();
    let err = folder.scan().expect_err("marker missing");
    assert!(matches!(err, FolderError::MarkerMissing { .. }), "{err}");
    assert!(folder.local("a").expect("local").is_some());
}

#[test]
fn full_disk_stops_cleanly() {
    let fx = fixture();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&fx.root)
        .output();
    match status {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "full_disk_stops_cleanly SKIPPED: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("full_disk_stops_cleanly SKIPPED: cannot run mount: {e}");
            return;
        }
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(fx.root.clone());

    let mut folder = fx.open();
    let data = noise(8, 3 << 20);
    let meta = file_meta(&data, 0o644, 0);
    let mut staging = folder.stage("big", &meta).expect("stage");
    let mut result = Ok(());
    for (piece, hash) in chunk_data(&data, &meta) {
        result = folder.write_chunk(&mut staging, &hash, piece);
        if result.is_err() {
            break;
        }
    }
    let err = result.expect_err("the disk is full");
    assert!(matches!(err, FolderError::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("no space"), "{err}");
    assert_eq!(
        fs::read_dir(fx.root.join(".clearskies/tmp"))
            .expect("tmp")
            .count(),
        0,
        "temp file removed"
    );
    assert!(!fx.root.join("big").exists());
}

#[test]
fn scan_removes_abandoned_temp_files() {
    let fx = fixture();
    let mut folder = fx.open();
    fx.write(".clearskies/tmp/old.part", b"abandoned");
    fx.write(".clearskies/tmp/new.part", b"in progress");
    set_mtime(
        &fx.root.join(".clearskies/tmp/old.part"),
        1_000_000_000_000_000_000,
    );
    assert_eq!(folder.scan().expect("scan"), vec![]);
    assert!(!fx.root.join(".clearskies/tmp/old.part").exists());
    assert!(fx.root.join(".clearskies/tmp/new.part").exists());
}

#[test]
fn chunks_are_not_served_through_a_parent_swapped_for_a_symlink() {
    let fx = fixture();
    let mut folder = fx.scanned_with("d/f", b"same bytes");
    let hash: [u8; 32] = Sha256::digest(b"same bytes").into();
    assert!(folder.read_chunk(&hash, 0, 10).expect("read").is_some());
    // `d` becomes a link to an outside folder holding a file of the same name and content.
    let outside = fx.root.parent().expect("parent").join("elsewhere");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("f"), b"same bytes").expect("write");
    fs::remove_dir_all(fx.root.join("d")).expect("rm");
    symlink(&outside, fx.root.join("d")).expect("symlink");
    assert_eq!(folder.read_chunk(&hash, 0, 10).expect("read"), None);
    let meta = file_meta(b"same bytes", 0o644, 0);
    let staging = folder.stage("copy", &meta).expect("stage");
    assert!(!staging.is_complete(), "not copied from outside either");
    // The scan sees a symlink where the directory was.
    let changes = folder.scan().expect("scan");
    assert_eq!(paths(&changes), ["d", "d/f"]);
    assert_eq!(
        change(&changes, "d").meta.as_ref().expect("d").kind,
        FileKind::Symlink
    );
    assert_eq!(change(&changes, "d/f").meta, None);
}

#[test]
fn a_file_replaces_an_empty_directory_but_not_a_full_one() {
    let fx = fixture();
    fs::create_dir_all(fx.root.join("empty")).expect("mkdir");
    let mut folder = fx.scanned_with("full/keep", b"user data");
    let meta = file_meta(b"now a file", 0o644, 0);
    let (piece, hash) = chunk_data(b"now a file", &meta)[0];
    for (path, ok) in [("empty", true), ("full", false)] {
        let expected = folder.local(path).expect("local");
        let mut staging = folder.stage(path, &meta).expect("stage");
        folder
            .write_chunk(&mut staging, &hash, piece)
            .expect("write");
        let result = folder.commit(staging, expected.as_ref());
        if ok {
            result.expect("commit");
            assert_eq!(fx.read(path), b"now a file");
        } else {
            assert!(matches!(result, Err(FolderError::LocalChange { .. })));
            assert_eq!(fx.read("full/keep"), b"user data");
        }
    }
}

#[test]
fn many_files_commit_together_and_each_gets_its_own_result() {
    let fx = fixture();
    let mut folder = fx.scanned_with("edited.txt", b"version 1");
    let indexed = folder.local("edited.txt").expect("local").expect("indexed");
    // Edited after the scan: its commit must be refused, the others must not be held back.
    fx.write("edited.txt", b"version 2, local");
    let mut items = Vec::new();
    let mut written = Vec::new();
    for i in 0..40 {
        let data = noise(100 + i, 3_000 + i as usize * 37);
        let meta = file_meta(&data, 0o644, 1_000_000_000 + i as i64);
        let path = format!("d{}/f{i}.bin", i % 4);
        let mut staging = folder.stage(&path, &meta).expect("stage");
        for (piece, hash) in chunk_data(&data, &meta) {
            folder
                .write_chunk(&mut staging, &hash, piece)
                .expect("write");
        }
        items.push((staging, None));
        written.push((path, data, meta));
    }
    let remote = file_meta(b"remote", 0o644, 5);
    let mut staging = folder.stage("edited.txt", &remote).expect("stage");
    let (piece, hash) = chunk_data(b"remote", &remote)[0];
    folder
        .write_chunk(&mut staging, &hash, piece)
        .expect("write");
    items.push((staging, Some(indexed)));
    let incomplete = file_meta(b"never written", 0o644, 6);
    items.push((
        folder.stage("missing.txt", &incomplete).expect("stage"),
        None,
    ));

    let results = folder.commit_many(items);
    assert_eq!(results.len(), 42);
    assert!(results[..40].iter().all(Result::is_ok), "{results:?}");
    assert!(matches!(results[40], Err(FolderError::LocalChange { .. })));
    assert!(matches!(results[41], Err(FolderError::Incomplete { .. })));
    for (path, data, meta) in &written {
        assert_eq!(&fx.read(path), data);
        assert_eq!(folder.local(path).expect("local").as_ref(), Some(meta));
    }
    assert_eq!(fx.read("edited.txt"), b"version 2, local");
    assert!(!fx.root.join("missing.txt").exists());
    // Committed files are indexed as they are: the next scan reports only the new folders
    // and the local edit.
    let scanned = folder.scan().expect("scan");
    let mut changed = paths(&scanned);
    changed.sort();
    assert_eq!(changed, ["d0", "d1", "d2", "d3", "edited.txt"]);
}
