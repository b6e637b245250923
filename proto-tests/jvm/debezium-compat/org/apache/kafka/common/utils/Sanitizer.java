/*
 * Debezium 3.6.1 names org.apache.kafka.common.utils.Sanitizer (for its JMX
 * metric names); kafka-clients 4.4.0 moved that class to
 * org.apache.kafka.common.utils.internals.Sanitizer, so the Postgres task
 * fails to start on Connect 4.4 with NoClassDefFoundError. Connect's plugin
 * class loader asks the runtime first and falls back to the plugin's own
 * jars, so this class, in a jar in Debezium's plugin directory
 * (scripts/setup puts it there), bridges the old name to the new one.
 * Only the test bed needs it; nothing of idemgate does.
 */
package org.apache.kafka.common.utils;

public final class Sanitizer {
    private Sanitizer() {
    }

    public static String sanitize(String name) {
        return org.apache.kafka.common.utils.internals.Sanitizer.sanitize(name);
    }

    public static String desanitize(String name) {
        return org.apache.kafka.common.utils.internals.Sanitizer.desanitize(name);
    }

    public static String jmxSanitize(String name) {
        return org.apache.kafka.common.utils.internals.Sanitizer.jmxSanitize(name);
    }
}
