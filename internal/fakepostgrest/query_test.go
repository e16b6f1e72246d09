package fakepostgrest

import (
	"net/url"
	"testing"
)

// FuzzParseQuery feeds arbitrary query strings to the parser: it must
// never panic, and whatever it accepts names only plain identifiers and
// known operators, so nothing but a parameter reaches SQL unquoted.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"select=devid&devid=eq.ABC123&limit=1",
		"select=*&order=received_at.desc.nullslast&limit=50&offset=10",
		"on_conflict=uplink_id,data_type",
		"devid=in.(A,B,\"C\")&data_type=neq.gnss",
		"name=ilike.*bee*&last_seen_at=is.null",
		"devid=eq.&limit=-1",
		"a%3Bdrop=eq.1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := parseQuery(v)
		if err != nil {
			if _, ok := err.(*apiError); !ok {
				t.Fatalf("error %T is not an apiError", err)
			}
			return
		}
		for _, c := range append(append([]string{}, q.selectCols...), q.onConflict...) {
			if !ident.MatchString(c) {
				t.Fatalf("accepted column %q", c)
			}
		}
		for _, fl := range q.filters {
			if !ident.MatchString(fl.col) {
				t.Fatalf("accepted filter column %q", fl.col)
			}
			switch fl.op {
			case "eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in":
			case "is":
				if fl.val != "null" && fl.val != "true" && fl.val != "false" && fl.val != "unknown" {
					t.Fatalf("is.%q accepted", fl.val)
				}
			default:
				t.Fatalf("operator %q accepted", fl.op)
			}
		}
		for _, o := range q.order {
			if !ident.MatchString(o.col) {
				t.Fatalf("accepted order column %q", o.col)
			}
		}
	})
}
