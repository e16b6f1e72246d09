package fakepostgrest

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5"
)

// table is what PostgREST's schema cache knows of one table.
type table struct {
	qname string            // quoted public."name"
	cols  []string          // in attnum order
	types map[string]string // column -> format_type
	pkey  []string
}

// loadTable reads the table's columns from the catalog (visible to every
// role); a missing table is 404 42P01 as PostgREST reports it.
func loadTable(ctx context.Context, tx pgx.Tx, name string) (*table, error) {
	if !ident.MatchString(name) {
		return nil, &apiError{status: http.StatusNotFound, Code: "42P01", Message: `relation "public.` + name + `" does not exist`}
	}
	t := &table{qname: "public." + pgx.Identifier{name}.Sanitize(), types: map[string]string{}}
	rows, err := tx.Query(ctx, `
		select a.attname, format_type(a.atttypid, a.atttypmod),
		       coalesce(a.attnum = any(i.indkey), false)
		from pg_attribute a
		left join pg_index i on i.indrelid = a.attrelid and i.indisprimary
		where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped
		order by a.attnum`, t.qname)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var col, typ string
		var pk bool
		if err := rows.Scan(&col, &typ, &pk); err != nil {
			return nil, err
		}
		t.cols = append(t.cols, col)
		t.types[col] = typ
		if pk {
			t.pkey = append(t.pkey, col)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(t.cols) == 0 {
		return nil, &apiError{status: http.StatusNotFound, Code: "42P01", Message: `relation "public.` + name + `" does not exist`}
	}
	return t, nil
}

// column checks that col exists and returns it quoted.
func (t *table) column(col string) (string, error) {
	if _, ok := t.types[col]; !ok {
		return "", badRequest("PGRST204", "Could not find the '"+col+"' column of '"+strings.TrimPrefix(t.qname, "public.")+"' in the schema cache")
	}
	return pgx.Identifier{col}.Sanitize(), nil
}

func (t *table) columnList(cols []string, prefix string) (string, error) {
	if cols == nil {
		cols = t.cols
	}
	out := make([]string, len(cols))
	for i, c := range cols {
		q, err := t.column(c)
		if err != nil {
			return "", err
		}
		out[i] = prefix + q
	}
	return strings.Join(out, ", "), nil
}

var errNoFilter = badRequest("21000", "UPDATE/DELETE requires a WHERE clause")

// where builds the WHERE clause of q's filters on alias, appending the
// values to args. Values are always parameters cast from text to the
// column's type, so a malformed value is Postgres's 22P02, as in PostgREST.
func (t *table) where(q query, alias string, args *[]any) (string, error) {
	if len(q.filters) == 0 {
		return "", nil
	}
	parts := make([]string, 0, len(q.filters))
	for _, f := range q.filters {
		c, err := t.column(f.col)
		if err != nil {
			return "", err
		}
		c = alias + c
		typ := t.types[f.col]
		param := func(v any) string {
			*args = append(*args, v)
			return "$" + itoa(len(*args))
		}
		switch f.op {
		case "eq", "neq", "gt", "gte", "lt", "lte":
			op := map[string]string{"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[f.op]
			parts = append(parts, c+" "+op+" "+param(f.val)+"::text::"+typ)
		case "like", "ilike":
			parts = append(parts, c+"::text "+f.op+" "+param(strings.ReplaceAll(f.val, "*", "%"))+"::text")
		case "is":
			parts = append(parts, c+" is "+f.val) // f.val is one of four keywords (parseFilter)
		case "in":
			parts = append(parts, c+" = any("+param(f.list)+"::text[]::"+typ+"[])")
		default:
			return "", errors.New("unreachable: operator " + f.op)
		}
	}
	return " where " + strings.Join(parts, " and "), nil
}

func (t *table) orderBy(q query) (string, error) {
	if len(q.order) == 0 {
		return "", nil
	}
	parts := make([]string, len(q.order))
	for i, o := range q.order {
		c, err := t.column(o.col)
		if err != nil {
			return "", err
		}
		if o.desc {
			c += " desc"
		}
		if o.nulls != "" {
			c += " nulls " + o.nulls
		}
		parts[i] = c
	}
	return " order by " + strings.Join(parts, ", "), nil
}

func itoa(n int) string {
	const digits = "0123456789"
	if n < 10 {
		return digits[n : n+1]
	}
	return itoa(n/10) + digits[n%10:n%10+1]
}
