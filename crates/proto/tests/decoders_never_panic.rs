//! Every request the API decodes, from arbitrary bytes, and the conversions a decoded request
//! goes through (VM spec, placement), plus the session header: errors, never a panic.

use blixard_core::VmSpec;
use blixard_proto::v1;
use blixard_proto::{orchestration, rpc};
use proptest::prelude::*;
use prost::Message;

fn decode_all(data: &[u8]) {
    macro_rules! each {
        ($($t:ty),* $(,)?) => { $( let _ = <$t>::decode(data); )* };
    }
    each!(
        v1::JoinRequest,
        v1::LeaveRequest,
        v1::LocalStatusRequest,
        v1::ClusterStatusRequest,
        v1::PutRequest,
        v1::GetRequest,
        v1::DeleteRequest,
        v1::ListRequest,
        v1::VmLogsRequest,
        v1::VmNameRequest,
        v1::ExplainRequest,
        v1::GetVmRequest,
        v1::ListVmsRequest,
        v1::DeleteVmRequest,
        v1::BackupRequest,
        v1::ListNodesRequest,
        v1::GetNodeRequest,
        v1::DrainRequest,
        v1::EligibilityRequest,
        v1::HeartbeatRequest,
        v1::SnapshotChunk,
        v1::ErrorDetail,
    );
    if let Ok(req) = v1::CreateVmRequest::decode(data) {
        if let Some(spec) = req.spec {
            let _ = VmSpec::try_from(spec);
        }
    }
    if let Ok(spec) = v1::VmSpec::decode(data) {
        let placement = spec.placement.clone();
        let _ = VmSpec::try_from(spec);
        let _ = orchestration::placement_from_wire(placement);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn requests_decode_or_fail(data in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&data);
    }

    /// Valid messages with bytes flipped reach deeper into the decoders than random bytes.
    #[test]
    fn damaged_specs_decode_or_fail(
        name in "[a-z]{1,12}", vcpus in any::<u32>(), mem in any::<u32>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let spec = v1::VmSpec { name, vcpus, memory_mib: mem, ..Default::default() };
        let mut data = v1::CreateVmRequest { spec: Some(spec), ..Default::default() }.encode_to_vec();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] ^= byte;
        }
        decode_all(&data);
    }

    #[test]
    fn session_headers_parse_or_fail(header in ".{0,80}") {
        let _ = rpc::decode_session(&header);
    }
}
