package decide

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// ContentTypeJSON is the content type of every error body.
const ContentTypeJSON = "application/json"

// Messages that name nothing request-specific.
const (
	msgBadRoute = "llmedge: this route is misconfigured (its upstream or region does not match the edge's policy); " +
		"contact your llmedge operator."
	msgUnknownToken = "llmedge: the token is not valid. Use the llmedge token issued to you (not a provider key); " +
		"if it was rotated, ask your llmedge operator for the current one."
	msgNotReady = "llmedge: the auth service has no policy yet; try again shortly."
)

// RateLimitUnavailable refuses a request the region's rate-limit service could not judge,
// in a region configured with ratelimit_failure: deny: 500, shaped for api.
func RateLimitUnavailable(api, region string) Decision {
	return deny(api, 500, ReasonRateLimitUnavailable, "llmedge: the rate-limit service is unavailable and region "+region+
		" refuses requests until it is back (ratelimit_failure: deny).")
}

// NotReady is the decision while no policy has arrived: 503, shaped for api.
func NotReady(api string) Decision {
	return deny(api, 503, ReasonNotReady, msgNotReady)
}

func missingTokenMessage(api string) string {
	switch api {
	case APIAnthropic:
		return "llmedge: missing token. Send your llmedge token in the x-api-key header " +
			"(the Anthropic SDK's api_key), or in the llmedge-token header."
	case APIGemini:
		return "llmedge: missing token. Send your llmedge token in the x-goog-api-key header or the key " +
			"query parameter (the Gemini SDK's api_key), or in the llmedge-token header."
	default:
		return "llmedge: missing token. Send your llmedge token as \"Authorization: Bearer <token>\" " +
			"(the OpenAI SDK's api_key), or in the llmedge-token header."
	}
}

func quote(s string) string { return strconv.Quote(s) }

// deny builds a refusal whose body looks like api's own errors.
func deny(api string, status int, reason, msg string) Decision {
	return Decision{
		Status:      status,
		Body:        errorBody(api, status, reason, msg),
		ContentType: ContentTypeJSON,
		Reason:      reason,
	}
}

type openAIError struct {
	Error struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	} `json:"error"`
}

type anthropicError struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
}

type geminiError struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
	} `json:"error"`
}

func errorBody(api string, status int, reason, msg string) []byte {
	var v any
	switch api {
	case APIAnthropic:
		var e anthropicError
		e.Type = "error"
		e.Error.Message = msg
		switch {
		case status == 400:
			e.Error.Type = "invalid_request_error"
		case status == 401:
			e.Error.Type = "authentication_error"
		case status == 403:
			e.Error.Type = "permission_error"
		default:
			e.Error.Type = "api_error"
		}
		v = e
	case APIGemini:
		var e geminiError
		e.Error.Code = status
		e.Error.Message = msg
		switch status {
		case 400:
			e.Error.Status = "INVALID_ARGUMENT"
		case 401:
			e.Error.Status = "UNAUTHENTICATED"
		case 403:
			e.Error.Status = "PERMISSION_DENIED"
		case 503:
			e.Error.Status = "UNAVAILABLE"
		default:
			e.Error.Status = "INTERNAL"
		}
		v = e
	default:
		var e openAIError
		e.Error.Message = msg
		e.Error.Code = reason
		e.Error.Type = "llmedge_auth_error"
		switch reason {
		case ReasonMissingToken, ReasonBYOKKeyMissing, ReasonBYOKTokenAsKey, ReasonConflictingCredentials:
			// The request is malformed rather than unauthorised, as OpenAI itself says of
			// a missing key.
			e.Error.Type = "invalid_request_error"
		}
		v = e
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)              // keep "<token>" readable for someone using curl
	if err := enc.Encode(v); err != nil { // cannot happen: plain strings and ints
		return []byte(`{"error":{"message":"llmedge: internal error"}}`)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
