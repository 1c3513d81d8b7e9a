-- psql against Ember. server/tests/pg_clients.rs runs it from this directory as
--   psql -X -q -A -F '|' -v ON_ERROR_STOP=0 -h 127.0.0.1 -p PORT -U ember -d ember -f psql_script.sql
-- with stdout and stderr in one stream, and compares the result with psql_expected.txt line by
-- line. Unaligned output (-A) keeps the expected file free of column padding; -q leaves out the
-- command tags (SET, BEGIN, ...), which psql prints only for statements that return no rows.
--
-- The backslash commands (\dn, \dt, \d, \dv, \df, \l) send psql's own pg_catalog queries. Their
-- expected output is what psql 15 prints against PostgreSQL 15 for the same objects, with
-- Ember's single owner `ember`; only \l differs, with the encoding and locale names Ember's
-- pg_database reports. Where Ember is right to differ, regenerate the expected file with
-- EMBER_TEST_BLESS=1 and review the diff.

-- Errors print as "ERROR:  <SQLSTATE>": the check is on the code clients act on, not on the
-- wording of the message.
\set VERBOSITY sqlstate
\pset null '(null)'

\echo '== simple queries'
select count(*) as nations from tpch.nation;
select r_regionkey, r_name from tpch.region order by r_regionkey;
select r_name as region, count(*) as nations
from tpch.nation join tpch.region on n_regionkey = r_regionkey
group by r_name order by r_name;
select l_returnflag, l_linestatus, count(*) as count_order, sum(l_quantity) as sum_qty,
       sum(l_extendedprice) as sum_base_price, min(l_shipdate) as first_ship,
       max(l_shipdate) as last_ship
from tpch.lineitem
where l_shipdate <= date '1998-09-02'
group by l_returnflag, l_linestatus
order by l_returnflag, l_linestatus;
select o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate
from tpch.orders order by o_orderkey limit 3;
select true as yes, false as no, 1.5::float8 as half, 42::int8 as big, 'x'::text as txt,
       null::int as nothing, date '2024-02-29' as leap, timestamp '2024-02-29 12:34:56' as ts;

\echo '== an error does not end the session'
select * from tpch.no_such_table;
select 'still connected' as status;

\echo '== SET, SHOW and RESET'
set application_name = 'ember-psql-test';
show application_name;
set statement_timeout = '5s';
show statement_timeout;
reset statement_timeout;
show statement_timeout;

\echo '== a transaction'
begin;
select count(*) as regions from tpch.region;
commit;

-- psql 15 has no \bind; \gdesc is its one use of the extended protocol: Parse and Describe of
-- an unnamed statement, whose parameter types the server infers, then a format_type() query
-- over the row description.
\echo '== a statement described through the extended protocol'
select $1::int as answer, n_name, n_regionkey from tpch.nation where n_nationkey = $2 \gdesc

\echo '== describe'
\dn
\dt tpch.*
\d tpch.nation
\d tpch.no_such_table
create table psql_typed (id int primary key, code char(1), name varchar(20), note varchar,
                         price numeric(15,2), shipped date, seen timestamp);
\d psql_typed
select column_name, data_type, character_maximum_length, numeric_precision, numeric_scale,
       datetime_precision, udt_name
from information_schema.columns where table_name = 'psql_typed' order by ordinal_position;
drop table psql_typed;
\dv system.*
\df ascii
\l ember
