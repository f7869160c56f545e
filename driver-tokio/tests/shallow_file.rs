//! A share's file read through tokio's `AsyncRead` + `AsyncSeek` (the library side of shallow
//! replicas' `cat`): here from a device's own folder, on real files and a real store; the
//! network path is the CLI's shallow-replica test.

use std::collections::BTreeMap;
use std::io::SeekFrom;
use std::time::Duration;

use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member};
use clearskies_proto::files::{FileMeta, key_of};
use clearskies_proto::node::Node;
use clearskies_proto::session::SessionConfig;
use clearskies_store::ReplicaStore;
use clearskies_tokio::MonotonicClock;
use clearskies_tokio::folder::{FolderConfig, open_file, spawn_folder};
use clearskies_tokio::node::spawn_node;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reads_and_seeks_like_a_tokio_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folder");
    std::fs::create_dir(&root).unwrap();
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("f.bin"), &content).unwrap();

    let key = DeviceKey::from_secret(&[5; 32]);
    let share = [3; 32];
    let clock = MonotonicClock::new();
    let node = Node::new(key.clone(), SessionConfig::default(), clock.now());
    let (handle, mut events, _task) = spawn_node(node, clock);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let members = BTreeMap::from([(
        key.device_id(),
        Member {
            public_key: key.public_key(),
            access: Access::ReadWrite,
        },
    )]);
    let store = ReplicaStore::open(&dir.path().join("replica.redb")).unwrap();
    handle.open_share(share, members, store).await.unwrap();
    let config = FolderConfig {
        share,
        root: root.clone(),
        index: dir.path().join("folder.redb"),
        versions: dir.path().join("versions.redb"),
        rescan: Duration::from_secs(3600),
        watch: true,
        shallow: None,
    };
    let folder = spawn_folder(handle.clone(), key.device_id(), config)
        .await
        .unwrap();
    let entry = handle.get(share, &key_of("f.bin")).await.unwrap().unwrap();
    let meta = FileMeta::decode(entry.winner().value.as_ref().unwrap()).unwrap();
    assert!(
        meta.chunks.len() > 3,
        "several chunks: {}",
        meta.chunks.len()
    );

    let mut file = open_file(&folder, meta);
    let mut all = Vec::new();
    file.read_to_end(&mut all).await.unwrap();
    assert!(all == content, "the whole file");
    // Seek into the middle (across chunk boundaries), and relative to the end.
    assert_eq!(
        file.seek(SeekFrom::Start(1_234_567)).await.unwrap(),
        1_234_567
    );
    let mut part = vec![0; 300_000];
    file.read_exact(&mut part).await.unwrap();
    assert!(part[..] == content[1_234_567..1_534_567]);
    file.seek(SeekFrom::End(-10)).await.unwrap();
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, &content[content.len() - 10..]);
    assert!(file.seek(SeekFrom::Current(-20)).await.is_ok());
    assert!(file.seek(SeekFrom::End(-4_000_000)).await.is_err());
    folder.stop();
    handle.shutdown().await;
}
