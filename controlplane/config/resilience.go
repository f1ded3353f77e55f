package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Resilience defaults (docs/CONFIG.md#retries-outlier-detection-and-circuit-breakers says
// why each is what it is).
const (
	// Five attempts in all: the users' own rule is to alert after five failures.
	DefaultRetryAttempts = 5
	DefaultRetryBase     = 250 * time.Millisecond
	DefaultRetryMax      = 10 * time.Second
	// A provider's Retry-After up to a minute is waited for; a longer one is ignored by
	// Envoy (the exponential back-off applies instead).
	DefaultRetryAfterMax = 60 * time.Second
	DefaultRetryBudget   = 20.0

	DefaultConsecutive5xx           = 5
	DefaultConsecutiveGatewayErrors = 5
	DefaultConsecutiveLocalFailures = 5
	DefaultBaseEjectionTime         = 30 * time.Second
	DefaultMaxEjectionPercent       = 50

	// LLM requests are long (seconds to minutes) and stream: 1,000 concurrent streams per
	// upstream per Envoy must fit with room to spare. HTTP/1.1 upstreams need a connection
	// per stream, hence as many connections as requests.
	DefaultMaxConnections     = 2048
	DefaultMaxPendingRequests = 1024
	DefaultMaxRequests        = 2048

	maxRetryAttempts   = 10
	maxBreakerSetting  = 1_000_000
	maxRetryBackoff    = 5 * time.Minute
	maxEjectionTime    = time.Hour
	maxConsecutiveFail = 1000
)

// retryConditions are the retry_on conditions the routes YAML may name, besides status
// codes. Envoy's router never retries once response headers went to the caller, whatever
// the condition.
var retryConditions = []string{"5xx", "connect-failure", "gateway-error", "refused-stream", "reset", "reset-before-request"}

// DefaultRetries is the retry policy of an upstream that does not set one: transient
// provider answers (429, 502, 503, 504, Anthropic's 529 "overloaded") and connections
// that failed or were reset before the request went out. Not "reset": to Envoy a
// response_timeout expiry is a reset too, and a provider that kept a request for
// response_timeout has likely billed it and would keep the retry as long.
func DefaultRetries() model.Retries {
	return model.Retries{
		Attempts:      DefaultRetryAttempts,
		On:            []string{"connect-failure", "refused-stream", "reset-before-request"},
		StatusCodes:   []uint32{429, 502, 503, 504, 529},
		BackoffBase:   DefaultRetryBase,
		BackoffMax:    DefaultRetryMax,
		RetryAfterMax: DefaultRetryAfterMax,
		BudgetPercent: DefaultRetryBudget,
	}
}

// DefaultOutlier is the outlier detection of an upstream that does not set one.
func DefaultOutlier() *model.Outlier {
	return &model.Outlier{
		Consecutive5xx:           DefaultConsecutive5xx,
		ConsecutiveGatewayErrors: DefaultConsecutiveGatewayErrors,
		ConsecutiveLocalFailures: DefaultConsecutiveLocalFailures,
		BaseEjectionTime:         DefaultBaseEjectionTime,
		MaxEjectionPercent:       DefaultMaxEjectionPercent,
	}
}

// DefaultCircuitBreaker is the circuit breaker of an upstream that does not set one.
func DefaultCircuitBreaker() model.CircuitBreaker {
	return model.CircuitBreaker{
		MaxConnections:     DefaultMaxConnections,
		MaxPendingRequests: DefaultMaxPendingRequests,
		MaxRequests:        DefaultMaxRequests,
	}
}

func validateRetries(p string, in Retries, c *collector) model.Retries {
	out := DefaultRetries()
	if in.Enabled != nil && !*in.Enabled {
		if in.Attempts != nil && *in.Attempts != 1 {
			c.add(p+".attempts", "retries are disabled (enabled: false); drop attempts or set it to 1")
		}
		out.Attempts = 1
	} else if in.Attempts != nil {
		if *in.Attempts < 1 || *in.Attempts > maxRetryAttempts {
			c.add(p+".attempts", "must be 1-%d (every try, the first one included; 1 turns retries off)", maxRetryAttempts)
		} else {
			out.Attempts = uint32(*in.Attempts)
		}
	}
	if in.On != nil {
		if len(in.On) == 0 {
			c.add(p+".on", "must list at least one condition; to turn retries off set attempts: 1")
		}
		out.On, out.StatusCodes = nil, nil
		seen := map[string]bool{}
		for i, v := range in.On {
			fp := fmt.Sprintf("%s.on[%d]", p, i)
			v = strings.ToLower(strings.TrimSpace(v))
			if seen[v] {
				c.add(fp, "%q is listed twice", v)
				continue
			}
			seen[v] = true
			if n, err := strconv.Atoi(v); err == nil {
				if n < 400 || n > 599 {
					c.add(fp, "status %d cannot be retried; name a 4xx or 5xx status", n)
					continue
				}
				out.StatusCodes = append(out.StatusCodes, uint32(n))
				continue
			}
			if !slices.Contains(retryConditions, v) {
				c.add(fp, "unknown condition %q (want a status such as 429 or 503, or one of %s)", v, strings.Join(retryConditions, ", "))
				continue
			}
			out.On = append(out.On, v)
		}
		slices.Sort(out.On)
		slices.Sort(out.StatusCodes)
	}
	out.BackoffBase = duration(p+".backoff.base", in.Backoff.Base, DefaultRetryBase, maxRetryBackoff, c)
	out.BackoffMax = duration(p+".backoff.max", in.Backoff.Max, max(DefaultRetryMax, out.BackoffBase), maxRetryBackoff, c)
	if in.Backoff.Max > 0 && out.BackoffMax < out.BackoffBase {
		c.add(p+".backoff.max", "must not be shorter than backoff.base (%s)", out.BackoffBase)
	}
	out.RetryAfterMax = duration(p+".retry_after_max", in.RetryAfterMax, DefaultRetryAfterMax, time.Hour, c)
	if in.BudgetPercent != nil {
		if *in.BudgetPercent <= 0 || *in.BudgetPercent > 100 {
			c.add(p+".budget_percent", "must be more than 0 and at most 100 (the share of active requests that may be retries)")
		} else {
			out.BudgetPercent = *in.BudgetPercent
		}
	}
	return out
}

func validateOutlier(p string, in OutlierDetection, c *collector) *model.Outlier {
	if in.Enabled != nil && !*in.Enabled {
		return nil
	}
	out := DefaultOutlier()
	count := func(f string, v *int, def uint32) uint32 {
		if v == nil {
			return def
		}
		if *v < 0 || *v > maxConsecutiveFail {
			c.add(p+"."+f, "must be 0-%d (0 turns this detector off)", maxConsecutiveFail)
			return def
		}
		return uint32(*v)
	}
	out.Consecutive5xx = count("consecutive_5xx", in.Consecutive5xx, out.Consecutive5xx)
	out.ConsecutiveGatewayErrors = count("consecutive_gateway_errors", in.ConsecutiveGatewayErrors, out.ConsecutiveGatewayErrors)
	out.ConsecutiveLocalFailures = count("consecutive_local_failures", in.ConsecutiveLocalFailures, out.ConsecutiveLocalFailures)
	out.BaseEjectionTime = duration(p+".base_ejection_time", in.BaseEjectionTime, DefaultBaseEjectionTime, maxEjectionTime, c)
	if in.MaxEjectionPercent != nil {
		if *in.MaxEjectionPercent < 1 || *in.MaxEjectionPercent > 100 {
			c.add(p+".max_ejection_percent", "must be 1-100")
		} else {
			out.MaxEjectionPercent = uint32(*in.MaxEjectionPercent)
		}
	}
	return out
}

func validateCircuitBreaker(p string, in CircuitBreaker, c *collector) model.CircuitBreaker {
	out := DefaultCircuitBreaker()
	set := func(f string, v int, dst *uint32) {
		switch {
		case v == 0:
		case v < 0 || v > maxBreakerSetting:
			c.add(p+"."+f, "must be 1-%d", maxBreakerSetting)
		default:
			*dst = uint32(v)
		}
	}
	set("max_connections", in.MaxConnections, &out.MaxConnections)
	set("max_pending_requests", in.MaxPendingRequests, &out.MaxPendingRequests)
	set("max_requests", in.MaxRequests, &out.MaxRequests)
	return out
}
