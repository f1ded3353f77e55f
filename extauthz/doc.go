// Package extauthz is the region's gRPC ext_authz service
// (envoy.service.auth.v3.Authorization): for every request Envoy sends it, it checks the
// caller's token against the policy the control plane serves over xDS, decides whether the
// caller may reach the route's upstream, and tells Envoy which provider key to inject and
// which caller credentials to remove. The decision itself is the pure function in
// extauthz/decide; upstream keys come from extauthz/keystore and never leave this process
// except in the header Envoy forwards to the provider.
package extauthz
