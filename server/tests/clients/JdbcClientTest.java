// pgJDBC against Ember. A single file with no build tool: server/tests/pg_clients.rs compiles it
// with `javac -cp postgresql.jar` and runs it as
//   java -cp postgresql.jar:DIR JdbcClientTest jdbc:postgresql://127.0.0.1:PORT/ember
// Every check runs even when an earlier one fails, so one run shows everything that is wrong; the
// exit code is non-zero when any check failed.
//
// pgJDBC speaks the extended protocol for everything, plain Statements included. With the default
// prepareThreshold it uses the unnamed statement for the first four executions of a
// PreparedStatement and a named server-side statement from the fifth on, asking for binary
// results once it has seen the statement's row description; the second connection
// (prepareThreshold=1) uses named statements from the first execution.

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.Date;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

public class JdbcClientTest {
    interface Check {
        void run(Connection conn) throws Exception;
    }

    static final class Mismatch extends RuntimeException {
        private static final long serialVersionUID = 1L;

        Mismatch(String message) {
            super(message);
        }
    }

    static int passed = 0;
    static final List<String> failures = new ArrayList<>();

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: JdbcClientTest jdbc:postgresql://HOST:PORT/DB");
            System.exit(2);
        }
        String url = args[0];
        String separator = url.contains("?") ? "&" : "?";
        String namedStatements = url + separator + "prepareThreshold=1";

        for (String u : new String[] {url, namedStatements}) {
            run(u, "plain statement", JdbcClientTest::plainStatement);
            run(u, "prepared statements", JdbcClientTest::preparedStatements);
            run(u, "result types", JdbcClientTest::resultTypes);
            run(u, "fetch size", JdbcClientTest::fetchSize);
            run(u, "errors", JdbcClientTest::errors);
        }
        run(url, "database metadata", JdbcClientTest::databaseMetadata);
        run(url, "keys and defaults", JdbcClientTest::keysAndDefaults);

        System.out.println(passed + " passed, " + failures.size() + " failed");
        if (!failures.isEmpty()) {
            System.out.println("failures:");
            for (String f : failures) {
                System.out.println("  " + f);
            }
            System.exit(1);
        }
    }

    /** Runs one check on a connection of its own, so a failure cannot leak into the next one. */
    static void run(String url, String name, Check check) {
        String label = name + " [" + url + "]";
        try (Connection conn = DriverManager.getConnection(url, "ember", "")) {
            check.run(conn);
            passed++;
            System.out.println("ok   " + label);
        } catch (Throwable e) {
            String message = e.getClass().getName() + ": " + e.getMessage();
            if (e instanceof SQLException) {
                message += " (SQLState " + ((SQLException) e).getSQLState() + ")";
            }
            failures.add(label + ": " + message);
            System.out.println("FAIL " + label + ": " + message);
            if (!(e instanceof Mismatch)) {
                e.printStackTrace(System.out);
            }
        }
    }

    static void expect(String what, Object expected, Object actual) {
        if (!Objects.equals(expected, actual)) {
            throw new Mismatch(
                    what + ": expected " + describe(expected) + ", got " + describe(actual));
        }
    }

    static void expectTrue(String what, boolean condition) {
        if (!condition) {
            throw new Mismatch(what);
        }
    }

    static String describe(Object value) {
        return value == null
                ? "null"
                : "<" + value + "> (" + value.getClass().getName() + ")";
    }

    /** The only row of a query's result, which must have exactly one. */
    static Object single(ResultSet rs, String what) throws SQLException {
        expectTrue(what + ": no row", rs.next());
        Object value = rs.getObject(1);
        expectTrue(what + ": more than one row", !rs.next());
        return value;
    }

    static long count(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            expectTrue(sql + ": no row", rs.next());
            return rs.getLong(1);
        }
    }

    static void plainStatement(Connection conn) throws Exception {
        try (Statement st = conn.createStatement()) {
            try (ResultSet rs = st.executeQuery("select count(*) from tpch.nation")) {
                expect("count(*) of tpch.nation", 25L, ((Number) single(rs, "count")).longValue());
            }
            try (ResultSet rs =
                    st.executeQuery("select n_name from tpch.nation where n_nationkey = 7")) {
                expect("n_name of nation 7", "GERMANY", single(rs, "n_name"));
            }
            try (ResultSet rs = st.executeQuery(
                    "select r_regionkey, r_name from tpch.region order by r_regionkey")) {
                String[] names = {"AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"};
                for (int i = 0; i < names.length; i++) {
                    expectTrue("region row " + i + " missing", rs.next());
                    expect("r_regionkey of row " + i, (long) i, rs.getLong(1));
                    expect("r_name of row " + i, names[i], rs.getString(2));
                }
                expectTrue("more than 5 regions", !rs.next());
            }
        }
    }

    static void preparedStatements(Connection conn) throws Exception {
        // Enough executions to cross the default prepareThreshold of 5, so the same statement
        // runs both unnamed and as a named server-side statement.
        String[] nations = {"ALGERIA", "ARGENTINA", "BRAZIL", "CANADA", "EGYPT", "ETHIOPIA",
                            "FRANCE", "GERMANY"};
        try (PreparedStatement ps =
                conn.prepareStatement("select n_name from tpch.nation where n_nationkey = ?")) {
            for (int key = 0; key < nations.length; key++) {
                ps.setInt(1, key);
                try (ResultSet rs = ps.executeQuery()) {
                    expect("n_name of nation " + key + " (int parameter)", nations[key],
                            single(rs, "n_name"));
                }
            }
            ps.setLong(1, 7L);
            try (ResultSet rs = ps.executeQuery()) {
                expect("n_name of nation 7 (bigint parameter)", "GERMANY", single(rs, "n_name"));
            }
        }
        try (PreparedStatement ps = conn.prepareStatement("select ?::int + 1")) {
            ps.setInt(1, 41);
            try (ResultSet rs = ps.executeQuery()) {
                expectTrue("select ?::int + 1: no row", rs.next());
                expect("? + 1 with 41", 42, rs.getInt(1));
            }
        }
        // pgJDBC sends strings as varchar.
        try (PreparedStatement ps =
                conn.prepareStatement("select n_nationkey from tpch.nation where n_name = ?")) {
            ps.setString(1, "GERMANY");
            try (ResultSet rs = ps.executeQuery()) {
                expectTrue("nation named GERMANY: no row", rs.next());
                expect("n_nationkey of GERMANY (string parameter)", 7L, rs.getLong(1));
                expectTrue("more than one nation named GERMANY", !rs.next());
            }
        }
        try (PreparedStatement ps = conn.prepareStatement("select ?::float8 * 2")) {
            ps.setDouble(1, 1.25);
            try (ResultSet rs = ps.executeQuery()) {
                expectTrue("? * 2: no row", rs.next());
                expect("? * 2 with 1.25 (double parameter)", 2.5, rs.getDouble(1));
            }
        }
        long expensive = count(conn, "select count(*) from tpch.orders where o_totalprice > 400000");
        expectTrue("some orders cost more than 400000", expensive > 0);
        try (PreparedStatement ps = conn.prepareStatement(
                "select count(*) from tpch.orders where o_totalprice > ?")) {
            ps.setDouble(1, 400000.0);
            try (ResultSet rs = ps.executeQuery()) {
                expectTrue("count with double: no row", rs.next());
                expect("orders over 400000 (double parameter)", expensive, rs.getLong(1));
            }
            ps.setBigDecimal(1, new BigDecimal("400000.00"));
            try (ResultSet rs = ps.executeQuery()) {
                expectTrue("count with numeric: no row", rs.next());
                expect("orders over 400000 (numeric parameter)", expensive, rs.getLong(1));
            }
        }
        // pgJDBC sends a java.sql.Date as text with a time zone offset ("1995-09-16 +00") and
        // leaves its type for the server to infer.
        List<Long> expectedKeys = new ArrayList<>();
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(
                "select o_orderkey from tpch.orders where o_orderdate = date '1995-09-16'"
                        + " order by 1 limit 3")) {
            while (rs.next()) {
                expectedKeys.add(rs.getLong(1));
            }
        }
        expect("orders of 1995-09-16 (literal)", 3, expectedKeys.size());
        expect("first order of 1995-09-16", 5958L, expectedKeys.get(0));
        try (PreparedStatement ps = conn.prepareStatement(
                "select o_orderkey from tpch.orders where o_orderdate = ? order by 1 limit 3")) {
            ps.setDate(1, Date.valueOf("1995-09-16"));
            List<Long> keys = new ArrayList<>();
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    keys.add(rs.getLong(1));
                }
            }
            expect("orders of 1995-09-16 (date parameter)", expectedKeys, keys);
        }
        try (PreparedStatement ps = conn.prepareStatement(
                "select count(*) from tpch.nation where (n_regionkey = 3) = ?")) {
            ps.setBoolean(1, true);
            try (ResultSet rs = ps.executeQuery()) {
                expectTrue("count with boolean: no row", rs.next());
                expect("nations in region 3 (boolean parameter)", 5L, rs.getLong(1));
            }
            ps.setBoolean(1, false);
            try (ResultSet rs = ps.executeQuery()) {
                expectTrue("count with boolean: no row", rs.next());
                expect("nations outside region 3 (boolean parameter)", 20L, rs.getLong(1));
            }
        }
        try (PreparedStatement ps = conn.prepareStatement("select ?::int is null")) {
            ps.setNull(1, Types.INTEGER);
            try (ResultSet rs = ps.executeQuery()) {
                expectTrue("? is null: no row", rs.next());
                expect("null parameter is null", true, rs.getBoolean(1));
            }
        }
    }

    static final String TYPES_QUERY =
            "select o_orderkey, cast(o_totalprice as double precision) as price_float,"
            + " o_totalprice, o_clerk, o_orderdate,"
            + " cast('2024-02-29 12:34:56' as timestamp) as ts, o_orderstatus = 'O' as is_open"
            + " from tpch.orders where o_orderkey = ?";

    /** getObject's Java classes and values, and the Postgres type names, of each column type. */
    static void resultTypes(Connection conn) throws Exception {
        // Twice through the same PreparedStatement: with prepareThreshold=1 the second run is on
        // a named statement with binary results, so both encodings are decoded.
        try (PreparedStatement ps = conn.prepareStatement(TYPES_QUERY)) {
            for (int round = 0; round < 2; round++) {
                ps.setLong(1, 1L);
                try (ResultSet rs = ps.executeQuery()) {
                    checkTypesRow(rs, "prepared, run " + (round + 1));
                }
            }
        }
        try (Statement st = conn.createStatement();
                ResultSet rs = st.executeQuery(TYPES_QUERY.replace("?", "1"))) {
            checkTypesRow(rs, "plain");
        }
    }

    static void checkTypesRow(ResultSet rs, String how) throws SQLException {
        String[] typeNames = {"int8", "float8", "numeric", "text", "date", "timestamp", "bool"};
        ResultSetMetaData md = rs.getMetaData();
        expect(how + ": column count", typeNames.length, md.getColumnCount());
        for (int i = 0; i < typeNames.length; i++) {
            expect(how + ": type of column " + md.getColumnName(i + 1), typeNames[i],
                    md.getColumnTypeName(i + 1));
        }
        expectTrue(how + ": order 1 not found", rs.next());
        expect(how + ": o_orderkey", 1L, rs.getObject(1));
        expect(how + ": price as float8", 172799.49, rs.getObject(2));
        Object price = rs.getObject(3);
        expectTrue(how + ": o_totalprice should be a BigDecimal, got " + describe(price),
                price instanceof BigDecimal);
        expect(how + ": o_totalprice", new BigDecimal("172799.49"), price);
        expect(how + ": o_clerk", "Clerk#000000951", rs.getObject(4));
        expect(how + ": o_orderdate", Date.valueOf("1996-01-02"), rs.getObject(5));
        expect(how + ": timestamp", Timestamp.valueOf("2024-02-29 12:34:56"), rs.getObject(6));
        expect(how + ": boolean", Boolean.TRUE, rs.getObject(7));
        expectTrue(how + ": more than one row", !rs.next());
    }

    /** With autocommit off and a fetch size, pgJDBC reads the result through a portal in batches. */
    static void fetchSize(Connection conn) throws Exception {
        long expected = count(conn, "select count(*) from tpch.lineitem");
        expect("count(*) of tpch.lineitem at scale 0.01", 60175L, expected);
        conn.setAutoCommit(false);
        long rows = 0;
        long checksum = 0;
        try (Statement st = conn.createStatement()) {
            st.setFetchSize(100);
            try (ResultSet rs = st.executeQuery("select l_orderkey from tpch.lineitem")) {
                while (rs.next()) {
                    rows++;
                    checksum += rs.getLong(1);
                }
            }
        }
        conn.commit();
        expect("rows read 100 at a time", expected, rows);
        long expectedSum = count(conn, "select sum(l_orderkey) from tpch.lineitem");
        expect("sum of l_orderkey read 100 at a time", expectedSum, checksum);
        conn.setAutoCommit(true);
    }

    static void errors(Connection conn) throws Exception {
        expectUndefinedTable(conn);
        try (Statement st = conn.createStatement();
                ResultSet rs = st.executeQuery("select count(*) from tpch.region")) {
            expect("query after an error", 5L, ((Number) single(rs, "count")).longValue());
        }
        // In a transaction the error aborts it; after a rollback the connection works again.
        conn.setAutoCommit(false);
        expectUndefinedTable(conn);
        conn.rollback();
        try (Statement st = conn.createStatement();
                ResultSet rs = st.executeQuery("select count(*) from tpch.region")) {
            expect("query after a rolled back error", 5L,
                    ((Number) single(rs, "count")).longValue());
        }
        conn.commit();
        conn.setAutoCommit(true);
    }

    static void expectUndefinedTable(Connection conn) throws Exception {
        try (Statement st = conn.createStatement()) {
            st.executeQuery("select * from tpch.no_such_table").close();
            throw new Mismatch("select from an unknown table did not fail");
        } catch (SQLException e) {
            expect("SQLState of an unknown table (message: " + e.getMessage() + ")", "42P01",
                    e.getSQLState());
        }
    }

    static List<String> column(ResultSet rs, String name) throws SQLException {
        List<String> values = new ArrayList<>();
        try (rs) {
            while (rs.next()) {
                values.add(rs.getString(name));
            }
        }
        return values;
    }

    static void databaseMetadata(Connection conn) throws Exception {
        DatabaseMetaData md = conn.getMetaData();
        List<String> catalogs = column(md.getCatalogs(), "TABLE_CAT");
        expectTrue("getCatalogs should contain ember: " + catalogs, catalogs.contains("ember"));

        List<String> schemas = column(md.getSchemas(), "TABLE_SCHEM");
        expectTrue("getSchemas should contain tpch and public: " + schemas,
                schemas.contains("tpch") && schemas.contains("public"));

        List<String> tables = new ArrayList<>();
        try (ResultSet rs = md.getTables(null, "tpch", "%", null)) {
            while (rs.next()) {
                expect("TABLE_SCHEM of " + rs.getString("TABLE_NAME"), "tpch",
                        rs.getString("TABLE_SCHEM"));
                if (rs.getString("TABLE_NAME").equals("nation")) {
                    expect("TABLE_TYPE of nation", "TABLE", rs.getString("TABLE_TYPE"));
                }
                tables.add(rs.getString("TABLE_NAME"));
            }
        }
        expectTrue("getTables(tpch) should contain nation and lineitem: " + tables,
                tables.contains("nation") && tables.contains("lineitem"));

        String[] names = {"n_nationkey", "n_name", "n_regionkey", "n_comment"};
        String[] typeNames = {"int8", "text", "int8", "text"};
        int[] sqlTypes = {Types.BIGINT, Types.VARCHAR, Types.BIGINT, Types.VARCHAR};
        try (ResultSet rs = md.getColumns(null, "tpch", "nation", null)) {
            for (int i = 0; i < names.length; i++) {
                expectTrue("getColumns(nation): column " + (i + 1) + " missing", rs.next());
                expect("column " + (i + 1) + " of nation", names[i], rs.getString("COLUMN_NAME"));
                expect("ORDINAL_POSITION of " + names[i], i + 1, rs.getInt("ORDINAL_POSITION"));
                expect("TYPE_NAME of " + names[i], typeNames[i], rs.getString("TYPE_NAME"));
                expect("DATA_TYPE of " + names[i], sqlTypes[i], rs.getInt("DATA_TYPE"));
                expect("IS_NULLABLE of " + names[i], "NO", rs.getString("IS_NULLABLE"));
            }
            expectTrue("getColumns(nation): more than 4 columns", !rs.next());
        }

        List<String> types = column(md.getTypeInfo(), "TYPE_NAME");
        expectTrue("getTypeInfo should list int8, text and date: " + types,
                types.contains("int8") && types.contains("text") && types.contains("date"));
    }

    /**
     * Primary keys, unique constraints and column defaults of a table made with CREATE TABLE, as
     * PostgreSQL 15 reports the same table: pgJDBC reads them from pg_index, pg_constraint and
     * pg_attrdef, expanding index keys with information_schema._pg_expandarray.
     */
    static void keysAndDefaults(Connection conn) throws Exception {
        try (Statement st = conn.createStatement()) {
            st.execute("CREATE SCHEMA jdbc_keys");
            st.execute("CREATE TABLE jdbc_keys.pairs (a int, b int, label text DEFAULT 'none', "
                    + "code varchar UNIQUE, PRIMARY KEY (b, a))");
        }
        DatabaseMetaData md = conn.getMetaData();
        List<String> keys = new ArrayList<>();
        try (ResultSet rs = md.getPrimaryKeys(null, "jdbc_keys", "pairs")) {
            while (rs.next()) {
                keys.add(rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME") + " "
                        + rs.getString("COLUMN_NAME") + " " + rs.getInt("KEY_SEQ") + " "
                        + rs.getString("PK_NAME"));
            }
        }
        expect("getPrimaryKeys(pairs)",
                List.of("jdbc_keys.pairs b 1 pairs_pkey", "jdbc_keys.pairs a 2 pairs_pkey"), keys);

        try (ResultSet rs = md.getPrimaryKeys(null, "tpch", "nation")) {
            expectTrue("tpch.nation has no primary key", !rs.next());
        }

        List<String> indexes = new ArrayList<>();
        try (ResultSet rs = md.getIndexInfo(null, "jdbc_keys", "pairs", false, false)) {
            while (rs.next()) {
                indexes.add(rs.getString("INDEX_NAME") + " " + rs.getBoolean("NON_UNIQUE") + " "
                        + rs.getInt("ORDINAL_POSITION") + " " + rs.getString("COLUMN_NAME"));
            }
        }
        expect("getIndexInfo(pairs)",
                List.of("pairs_code_key false 1 code", "pairs_pkey false 1 b",
                        "pairs_pkey false 2 a"),
                indexes);

        List<String> defaults = new ArrayList<>();
        try (ResultSet rs = md.getColumns(null, "jdbc_keys", "pairs", null)) {
            while (rs.next()) {
                defaults.add(rs.getString("COLUMN_NAME") + "=" + rs.getString("COLUMN_DEF"));
            }
        }
        expect("COLUMN_DEF of pairs",
                List.of("a=null", "b=null", "label='none'::text", "code=null"), defaults);
    }
}
