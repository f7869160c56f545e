//! Arbitrary bytes, pushed in arbitrary pieces, through the frame decoder and the reassembler.
//! Invariants: no panic; buffered bytes stay within one frame plus the last push; reassembly
//! never holds more than MAX_OPEN_STREAMS * MAX_MESSAGE_SIZE.
#![no_main]

use clearskies_proto::wire::{
    FRAME_HEADER_LEN, FrameDecoder, MAX_FRAME_PAYLOAD, MAX_MESSAGE_SIZE, MAX_OPEN_STREAMS,
    PREFACE_LEN, Reassembler,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the piece size, so the corpus explores split points.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);
    let mut decoder = FrameDecoder::new();
    let mut reassembler = Reassembler::new();
    for chunk in rest.chunks(piece) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= MAX_FRAME_PAYLOAD);
                    if reassembler.push(frame).is_err() {
                        return;
                    }
                    assert!(reassembler.buffered() <= MAX_OPEN_STREAMS * MAX_MESSAGE_SIZE);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() < PREFACE_LEN + FRAME_HEADER_LEN + MAX_FRAME_PAYLOAD + piece);
    }
});
