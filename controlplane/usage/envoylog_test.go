package usage

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A line as Envoy's JSON access log writes it (controlplane/translate, jsonAccessLog).
const envoyLineOK = `{"attempts":1,"bytes_in":67,"bytes_out":361,"caller":"demo","client":"127.0.0.1","details":"via_upstream","duration_ms":3,"first_byte_sent_us":2875,"flags":"-","method":"POST","model":"gpt-4o-mini","path":"/openai/v1/chat/completions","protocol":"HTTP/1.1","region":"hk","request_headers_bytes":165,"request_id":"ac9f95bd","response_headers_bytes":279,"route":"openai","status":200,"stream":true,"tenant":"team-a","time":"2026-12-03T08:59:15.670Z","token_usage":"llm_protocol: OPENAI_CHAT_COMPLETIONS model: \"gpt-4o-mini-2024-07-18\" input_tokens { value: 11 } output_tokens { value: 5 } total_tokens { value: 16 } input_token_details { cached_tokens { value: 3 } } extraction_status: COMPLETE ","ttfb_ms":3,"upstream":"upstream_openai","upstream_host":"127.0.0.1:8090","upstream_name":"openai","upstream_path":"/v1/chat/completions","user_agent":null}`

func TestRecordFromEnvoyLine(t *testing.T) {
	r, ok, err := RecordFromEnvoyLine([]byte(envoyLineOK))
	if err != nil || !ok {
		t.Fatalf("ok %v, err %v", ok, err)
	}
	want := Record{
		Time: time.Date(2026, 12, 3, 8, 59, 15, 670e6, time.UTC), Region: "hk", Route: "openai", Upstream: "openai",
		Caller: "demo", Tenant: "team-a", RequestedModel: "gpt-4o-mini", ReportedModel: "gpt-4o-mini-2024-07-18", Stream: true,
		Status: 200, Duration: 3 * time.Millisecond, TTFB: 2875 * time.Microsecond, InputTokens: 11, OutputTokens: 5, CachedTokens: 3,
		Extraction: ExtractionOK, RequestBytes: 165 + 67, ResponseBytes: 279 + 361, Attempts: 1, RequestID: "ac9f95bd",
	}
	if r.Time.Equal(want.Time) {
		r.Time = want.Time
	}
	if r != want {
		t.Errorf("record\n%+v\nwant\n%+v", r, want)
	}

	// An AI request whose answer carried no usage: "missing", not zero.
	noUsage := strings.Replace(envoyLineOK, `"token_usage":"llm_protocol`, `"token_usage":null,"x":"`, 1)
	if r, ok, err := RecordFromEnvoyLine([]byte(noUsage)); err != nil || !ok || r.Extraction != ExtractionMissing || r.InputTokens != 0 {
		t.Errorf("without token usage: %+v %v %v", r, ok, err)
	}

	skipped := map[string]string{
		"Envoy's own message":   `[2026-12-03 08:51:44.640][15931][warning][misc] Deprecated field`,
		"the module's log line": `{"time":"2026-12-03T08:59:15.671819813Z","level":"INFO","msg":"rate-limit checks in process","region":"hk"}`,
		"an empty line":         `   `,
		"a shed request":        strings.Replace(envoyLineOK, `"details":"via_upstream"`, `"details":"`+ShedDetails+`"`, 1),
	}
	for name, line := range skipped {
		if _, ok, err := RecordFromEnvoyLine([]byte(line)); ok || err != nil {
			t.Errorf("%s: ok %v, err %v; want skipped", name, ok, err)
		}
	}
	noUsage2 := strings.Replace(envoyLineOK, `"token_usage":`, `"other":`, 1)
	if _, ok, err := RecordFromEnvoyLine([]byte(noUsage2)); ok || !errors.Is(err, ErrNoUsageFields) {
		t.Errorf("a line written without usage.envoy_access_log: ok %v, err %v", ok, err)
	}
	bad := map[string]string{
		"torn line":        envoyLineOK[:200],
		"bad time":         strings.Replace(envoyLineOK, `"time":"2026-12-03T08:59:15.670Z"`, `"time":"yesterday"`, 1),
		"bad token usage":  strings.Replace(envoyLineOK, `"token_usage":"llm_protocol`, `"token_usage":"{{{`, 1),
		"status as a word": strings.Replace(envoyLineOK, `"status":200`, `"status":"ok"`, 1),
	}
	for name, line := range bad {
		if _, ok, err := RecordFromEnvoyLine([]byte(line)); ok || err == nil {
			t.Errorf("%s: ok %v, err %v; want an error", name, ok, err)
		}
	}
}

func TestImportEnvoyLogAddsWhatTheStoreLacks(t *testing.T) {
	ctx := t.Context()
	st, err := OpenSQLite(ctx, t.TempDir()+"/usage.db")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	other := strings.Replace(envoyLineOK, `"request_id":"ac9f95bd"`, `"request_id":"second"`, 1)
	plain := strings.Replace(other, `"token_usage":`, `"x":`, 1)
	log := envoyLineOK + "\n[warning] not a line\n" + other + "\n" + envoyLineOK[:100] + "\n" + plain + "\n"
	prices := NewPrices(nil)
	var a ImportStats
	if err := ImportEnvoyLog(ctx, st, prices, "envoy.log", strings.NewReader(log), &a); err != nil {
		t.Fatal(err)
	}
	if a.Lines != 5 || a.Requests != 2 || a.Added != 2 || a.Skipped != 1 || a.BadLines != 1 || a.NoUsage != 1 || len(a.Bad) != 1 || !strings.HasPrefix(a.Bad[0], "envoy.log:4: ") {
		t.Errorf("first import: %+v", a)
	}
	var b ImportStats
	if err := ImportEnvoyLog(ctx, st, prices, "envoy.log", strings.NewReader(log), &b); err != nil {
		t.Fatal(err)
	}
	if b.Requests != 2 || b.Added != 0 {
		t.Errorf("second import: %+v; want nothing added", b)
	}
	rs, err := st.Records(ctx, "team-a", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC))
	if err != nil || len(rs) != 2 {
		t.Errorf("records: %v %v", rs, err)
	}
}
