// Package extauthz will hold the gRPC ext_authz service: it checks caller tokens and injects
// upstream provider keys, with its policy delivered by the control plane over xDS. It is
// empty until that feature lands; the control plane does not wire it into Envoy yet.
package extauthz
