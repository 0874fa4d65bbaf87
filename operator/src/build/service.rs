//! The Service in front of the server pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as KubeServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Owner, HTTP_PORT_NAME};
use crate::crd::SpeculativeDeploymentSpec;

/// The Service of `owner`.
pub fn service(owner: &Owner, spec: &SpeculativeDeploymentSpec) -> Service {
    Service {
        metadata: owner.child_meta(owner.name.clone()),
        spec: Some(KubeServiceSpec {
            type_: Some(spec.service.type_.as_str().into()),
            selector: Some(owner.selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.into()),
                port: spec.service.port,
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..KubeServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::owner;
    use crate::plan::tests::sample_spec;

    #[test]
    fn selects_the_pods_on_the_named_port() {
        let svc = service(&owner(), &sample_spec()).spec.unwrap();
        assert_eq!(svc.selector.unwrap(), owner().selector_labels());
        let port = &svc.ports.unwrap()[0];
        assert_eq!(port.port, 8080);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
    }
}
