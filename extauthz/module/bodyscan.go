package main

/*
#include "body.h"
*/
import "C"

import "unsafe"

// The module's tests reach body.h through these wrappers (cgo is not allowed in test
// files); nothing in the module calls them.

// The kinds of body llmedge_body_facts tells apart (body.h).
const (
	bodyInvalid = C.LLMEDGE_BODY_INVALID
	bodyOther   = C.LLMEDGE_BODY_OTHER
	bodyObject  = C.LLMEDGE_BODY_OBJECT
	bodyComplex = C.LLMEDGE_BODY_COMPLEX
)

// bodyPtr is b's first byte for C, which reads b in place and keeps no pointer to it; nil
// for an empty b, which C does not read.
func bodyPtr(b []byte) *C.char {
	if len(b) == 0 {
		return nil
	}
	return (*C.char)(unsafe.Pointer(&b[0]))
}

// scanBody runs body.h's llmedge_body_facts over b: the body's kind (body*) and the raw
// values of its top-level "model" and "stream", as slices of b. It panics if C points
// them outside b.
func scanBody(b []byte) (kind int, model, stream []byte, hasModel, hasStream bool) {
	var out C.llmedge_body_scan
	p := bodyPtr(b)
	C.llmedge_body_facts(p, C.size_t(len(b)), &out)
	within := func(ptr *C.char, n C.size_t) []byte {
		off := uintptr(unsafe.Pointer(ptr)) - uintptr(unsafe.Pointer(p))
		if p == nil || off > uintptr(len(b)) || uintptr(n) > uintptr(len(b))-off {
			panic("body.h: a member's value outside the body")
		}
		return b[off : off+uintptr(n) : off+uintptr(n)]
	}
	if out.model != nil {
		model, hasModel = within(out.model, out.model_len), true
	}
	if out.stream != nil {
		stream, hasStream = within(out.stream, out.stream_len), true
	}
	return int(out.kind), model, stream, hasModel, hasStream
}

// jsonValidC is body.h's llmedge_json_valid over b.
func jsonValidC(b []byte) bool {
	return C.llmedge_json_valid(bodyPtr(b), C.size_t(len(b))) != 0
}
