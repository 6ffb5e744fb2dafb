// pgjdbc through loopgate: a PreparedStatement run 7 times (past the
// default prepareThreshold=5, when pgjdbc switches to a named server-side
// statement and stops describing it) and a portal read with setFetchSize(2).
// Every value is printed; getDate on the masked dob must work.
//
// Run: java -cp postgresql.jar Drivers.java HOST PORT
import java.sql.*;

public class Drivers {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/postgres?user=clinic-bot&sslmode=disable";
        try (Connection conn = DriverManager.getConnection(url)) {
            String sql = "SELECT id, ssn, email, mrn, phone, dob FROM patients WHERE id <= ? ORDER BY id";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                for (int run = 1; run <= 7; run++) {
                    ps.setInt(1, 5);
                    int rows = 0;
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            rows++;
                            Date dob = rs.getDate("dob");
                            System.out.println("run " + run + " | " + rs.getInt(1) + " | " + rs.getString(2) + " | "
                                    + rs.getString(3) + " | " + rs.getString(4) + " | " + rs.getString(5) + " | "
                                    + dob);
                        }
                    }
                    System.out.println("run " + run + " rows " + rows);
                }
            }
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT id, ssn, mrn, phone, dob FROM patients WHERE id <= 9 ORDER BY id")) {
                ps.setFetchSize(2);
                int rows = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        rows++;
                        System.out.println("fetch | " + rs.getInt(1) + " | " + rs.getString(2) + " | "
                                + rs.getString(3) + " | " + rs.getString(4) + " | " + rs.getDate(5));
                    }
                }
                System.out.println("fetch rows " + rows);
            }
            conn.commit();
        }
    }
}
