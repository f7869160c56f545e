//! The folder-sync vectors of `spec/vectors/` (`chunking.json`, `paths.json`), produced by
//! `spec/vectors/generate_files.py` (standard-library Python, independent of this crate).

use clearskies_proto::files::chunker::{ChunkParams, Chunker, chunk_lengths, class_for, gear};
use clearskies_proto::files::path::{case_fold_key, conflict_name, validate, windows_problem};
use clearskies_proto::identity::DeviceId;
use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;
use common::{cases, load, s, unhex};

/// SHA-256 counter mode as `spec/files.md` § Test vectors defines it.
fn counter_bytes(seed: &str, len: usize) -> Vec<u8> {
    if seed == "zeros" {
        return vec![0; len];
    }
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            &Sha256::new()
                .chain_update(seed.as_bytes())
                .chain_update(i.to_be_bytes())
                .finalize(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("missing {key} in {v}"))
}

#[test]
fn gear_table_and_params() {
    let doc = load("chunking.json");
    let table: Vec<String> = gear().iter().map(|g| format!("{g:016x}")).collect();
    let expected: Vec<&str> = doc["gear"]
        .as_array()
        .expect("gear")
        .iter()
        .map(|g| g.as_str().expect("hex"))
        .collect();
    assert_eq!(table, expected);
    for p in doc["params"].as_array().expect("params") {
        let got = ChunkParams::of(u(p, "class") as u32);
        assert_eq!(u64::from(got.min), u(p, "min"));
        assert_eq!(u64::from(got.avg), u(p, "avg"));
        assert_eq!(u64::from(got.max), u(p, "max"));
        assert_eq!(format!("{:016x}", got.mask_small), s(p, "mask_small"));
        assert_eq!(format!("{:016x}", got.mask_large), s(p, "mask_large"));
    }
    for c in doc["class_for"].as_array().expect("class_for") {
        assert_eq!(u64::from(class_for(u(c, "size"))), u(c, "class"), "{c}");
    }
}

#[test]
fn chunk_boundaries() {
    let doc = load("chunking.json");
    for case in cases(&doc) {
        let name = s(case, "name");
        let mut data = case["prefix_hex"].as_str().map(unhex).unwrap_or_default();
        data.extend(counter_bytes(s(case, "seed"), u(case, "len") as usize));
        let class = u(case, "class") as u32;
        let expected: Vec<u64> = case["lengths"]
            .as_array()
            .expect("lengths")
            .iter()
            .map(|l| l.as_u64().expect("length"))
            .collect();
        let got: Vec<u64> = chunk_lengths(&data, class)
            .into_iter()
            .map(u64::from)
            .collect();
        assert_eq!(got, expected, "{name}");

        // The same through the streaming API in odd-sized buffers.
        let mut chunker = Chunker::new(class);
        let mut streamed = Vec::new();
        let mut last = 0;
        for buffer in data.chunks(65_537) {
            let base = chunker.position();
            for cut in chunker.push(buffer) {
                streamed.push(base + cut as u64 - last);
                last = base + cut as u64;
            }
        }
        streamed.extend(chunker.finish().map(u64::from));
        assert_eq!(streamed, expected, "{name} streamed");

        let mut at = 0;
        for (len, hash) in got
            .iter()
            .zip(case["chunk_sha256"].as_array().expect("hashes"))
        {
            let chunk = &data[at..at + *len as usize];
            assert_eq!(
                hex::encode(Sha256::digest(chunk)),
                hash.as_str().expect("hex"),
                "{name}"
            );
            at += *len as usize;
        }
    }
}

#[test]
fn path_rules() {
    let doc = load("paths.json");
    for case in doc["validate"].as_array().expect("validate") {
        let path = s(case, "path");
        let got = validate(path).err().map(|e| e.code());
        assert_eq!(got, case["error"].as_str(), "{path:?}");
        if got.is_none() {
            assert_eq!(
                windows_problem(path).is_some(),
                case["windows_problem"].as_bool().expect("windows_problem"),
                "{path:?}"
            );
            assert_eq!(case_fold_key(path), s(case, "case_fold_key"), "{path:?}");
        }
    }
    for case in doc["conflict_name"].as_array().expect("conflict_name") {
        let id: [u8; 32] = unhex(s(case, "device_id_hex"))
            .try_into()
            .expect("32 bytes");
        let device = DeviceId::from_bytes(id);
        let got = conflict_name(s(case, "path"), &device, u(case, "wall_micros"));
        assert_eq!(got, s(case, "expected"));
        assert_eq!(validate(&got), Ok(()), "{got}");
    }
}
