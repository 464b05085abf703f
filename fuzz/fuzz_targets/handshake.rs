#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = liege::testing::decoders::handshake_message(data);
});
