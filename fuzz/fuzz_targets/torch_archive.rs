#![no_main]
//! `torch.save` zips and TorchScript archives: opening checks every storage; then each tensor
//! is read, as a checkpoint load would.
use candle_core::Device;
use clip_adapter::clip::load::torch_archive::TorchArchive;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(archive) = TorchArchive::from_bytes(data.to_vec()) else {
        return;
    };
    let names: Vec<String> = archive.shapes().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let _ = archive.load(&name, &Device::Cpu);
    }
});
