//! Arbitrary bytes as an `org.clearskies.db` extension payload. Invariants: no panic; whatever
//! decodes re-encodes to something that decodes to the same message (the encoder is canonical,
//! the decoder lenient); every decoded record goes through the shape check without panicking,
//! and a record of valid shape has signed bytes of exactly the length `spec/database.md` § 5.1
//! gives.
#![no_main]

use clearskies_proto::db::record::RECORD_SIGNATURE_CONTEXT;
use clearskies_proto::db::{DbMessage, Record};
use libfuzzer_sys::fuzz_target;

/// The length of the signed bytes of `record`, from the table of the spec.
fn signed_len(record: &Record) -> usize {
    let value = record.value.as_ref().map_or(0, |v| 4 + v.len());
    RECORD_SIGNATURE_CONTEXT.len()
        + 32
        + 4
        + record.key.len()
        + 1
        + value
        + 4
        + 40 * record.version.len()
        + 32
        + 8
        + 8
}

fuzz_target!(|data: &[u8]| {
    let Ok(Some(message)) = DbMessage::decode(data) else {
        return;
    };
    let again = message.encode();
    assert_eq!(DbMessage::decode(&again), Ok(Some(message.clone())));
    if let DbMessage::Records(batch) = &message {
        for (_, record) in &batch.records {
            if record.check_shape().is_ok() {
                assert_eq!(record.signed_bytes(&[9; 32]).len(), signed_len(record));
            }
        }
    }
});
