package fakepostgrest

import (
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// query is a parsed PostgREST query string: the subset this server
// understands (see the package comment).
type query struct {
	selectCols []string // nil = *
	onConflict []string
	filters    []filter
	order      []orderTerm
	limit      int // -1 = none
	offset     int
}

type filter struct {
	col  string
	op   string // eq neq gt gte lt lte like ilike is in
	val  string
	list []string // for in
}

type orderTerm struct {
	col   string
	desc  bool
	nulls string // "", "first", "last"
}

var ident = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// maxFilters bounds the work one query string can ask for.
const maxFilters = 32

// parseQuery parses PostgREST's query parameters. Column names are checked
// to be plain identifiers here and against the table later.
func parseQuery(v url.Values) (query, error) {
	q := query{limit: -1}
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic SQL and parameter order
	for _, k := range keys {
		vals := v[k]
		switch k {
		case "select":
			cols, err := identList(vals[len(vals)-1], "select")
			if err != nil {
				return q, err
			}
			if len(cols) == 1 && cols[0] == "*" {
				cols = nil
			}
			q.selectCols = cols
		case "on_conflict":
			cols, err := identList(vals[len(vals)-1], "on_conflict")
			if err != nil || (len(cols) == 1 && cols[0] == "*") {
				return q, badRequest("PGRST100", "on_conflict: want a comma-separated column list")
			}
			q.onConflict = cols
		case "order":
			for _, term := range strings.Split(vals[len(vals)-1], ",") {
				o, err := parseOrder(term)
				if err != nil {
					return q, err
				}
				q.order = append(q.order, o)
			}
		case "limit", "offset":
			n, err := strconv.Atoi(vals[len(vals)-1])
			if err != nil || n < 0 || n > 1_000_000 {
				return q, badRequest("PGRST100", k+": want a non-negative integer")
			}
			if k == "limit" {
				q.limit = n
			} else {
				q.offset = n
			}
		case "columns":
			// PostgREST's ?columns= restricts the inserted keys; not needed here.
			return q, badRequest("PGRST100", "columns= is not supported by this test server")
		default:
			if !ident.MatchString(k) {
				return q, badRequest("PGRST100", "unknown query parameter or bad column name: "+k)
			}
			for _, val := range vals {
				f, err := parseFilter(k, val)
				if err != nil {
					return q, err
				}
				q.filters = append(q.filters, f)
			}
		}
		if len(q.filters)+len(q.order) > maxFilters {
			return q, badRequest("PGRST100", "too many filters")
		}
	}
	return q, nil
}

func identList(s, what string) ([]string, error) {
	if s == "*" {
		return []string{"*"}, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxFilters*4 {
		return nil, badRequest("PGRST100", what+": too many columns")
	}
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if !ident.MatchString(p) {
			return nil, badRequest("PGRST100", what+": unsupported column "+strconv.Quote(p))
		}
		parts[i] = p
	}
	return parts, nil
}

func parseOrder(term string) (orderTerm, error) {
	parts := strings.Split(term, ".")
	o := orderTerm{col: parts[0]}
	if !ident.MatchString(o.col) || len(parts) > 3 {
		return o, badRequest("PGRST100", "order: unsupported term "+strconv.Quote(term))
	}
	for _, p := range parts[1:] {
		switch p {
		case "asc":
		case "desc":
			o.desc = true
		case "nullsfirst":
			o.nulls = "first"
		case "nullslast":
			o.nulls = "last"
		default:
			return o, badRequest("PGRST100", "order: unsupported modifier "+strconv.Quote(p))
		}
	}
	return o, nil
}

func parseFilter(col, val string) (filter, error) {
	op, arg, ok := strings.Cut(val, ".")
	f := filter{col: col, op: op, val: arg}
	if !ok {
		return f, badRequest("PGRST100", "filter "+col+": want <op>.<value>")
	}
	switch op {
	case "eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike":
	case "is":
		switch arg {
		case "null", "true", "false", "unknown":
		default:
			return f, badRequest("PGRST100", "filter "+col+": is.<null|true|false|unknown>")
		}
	case "in":
		inner, ok := strings.CutPrefix(arg, "(")
		inner, ok2 := strings.CutSuffix(inner, ")")
		if !ok || !ok2 {
			return f, badRequest("PGRST100", "filter "+col+": in.(a,b,…)")
		}
		f.list = []string{}
		if inner != "" {
			f.list = strings.Split(inner, ",")
		}
		for i, s := range f.list {
			f.list[i] = strings.Trim(s, `"`)
		}
	default:
		return f, badRequest("PGRST100", "filter "+col+": unsupported operator "+strconv.Quote(op))
	}
	return f, nil
}
