//! Arbitrary bytes as an `org.clearskies.files` payload, and as a file document.
//! Invariants: no panic; a decoded message re-encodes to something that decodes to the same
//! message; a `Get` that decodes asks for 1 to `MAX_PIECE` bytes; a document that decodes
//! passes its consistency check and re-encodes to a document that decodes to itself.
#![no_main]

use clearskies_proto::files::FileMeta;
use clearskies_proto::files::msg::{FilesMessage, MAX_PIECE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(message)) = FilesMessage::decode(data) {
        let again = message.encode();
        assert_eq!(FilesMessage::decode(&again), Ok(Some(message.clone())));
        if let FilesMessage::Get(get) = &message {
            assert!(get.len >= 1 && get.len <= MAX_PIECE);
        }
    }
    if let Ok(meta) = FileMeta::decode(data) {
        assert!(meta.check().is_ok());
        assert_eq!(FileMeta::decode(&meta.encode()), Ok(meta));
    }
});
