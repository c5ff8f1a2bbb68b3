//! What the control plane's in-process tests share: a spec submission and an agent's
//! registration.

use tend_control::services::Submission;

pub fn submission(text: &str, expected: Option<u64>) -> Submission {
    Submission {
        spec: tend_spec::load_service("s.yml", text).unwrap(),
        text: text.into(),
        file: "s.yml".into(),
        artifacts: Default::default(),
        expected_generation: expected,
        rollback: None,
        allow_data_loss: false,
    }
}

pub fn register_req(id: &str, cluster: Option<&str>) -> tend_api::RegisterRequest {
    tend_api::RegisterRequest {
        agent_id: id.into(),
        host: "127.0.0.1".into(),
        agent_url: "http://127.0.0.1:1".into(),
        attributes: Default::default(),
        resources: tend_api::AgentResources {
            cpus: 4.0,
            memory_mb: 4096,
            disk_mb: 10_000,
            port_range: [20_000, 20_100],
        },
        cluster_id: cluster.map(str::to_string),
        revision: None,
    }
}
