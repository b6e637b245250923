/*
 * The one class connect-file 4.3.1 needs that the 4.4 runtime moved.
 *
 * Maven Central serves connect-file (FileStreamSource/Sink) only up to 4.3.1
 * here; 4.3.2 and 4.4.0 are refused. Its connectors and tasks answer
 * version() through org.apache.kafka.common.utils.AppInfoParser, which
 * kafka-clients 4.4 moved to ...common.utils.internals. Nothing else the
 * plugin uses changed (scripts/setup checks every class it references).
 * scripts/setup compiles this file into a jar beside connect-file in its
 * plugin directory: Connect's plugin class loader asks the worker's class
 * path first and then the plugin's own jars, so only this missing name is
 * served from here, and Apache's connector bytecode runs unchanged.
 */
package org.apache.kafka.common.utils;

public final class AppInfoParser {
    private AppInfoParser() {
    }

    public static String getVersion() {
        return org.apache.kafka.common.utils.internals.AppInfoParser.getVersion();
    }

    public static String getCommitId() {
        return org.apache.kafka.common.utils.internals.AppInfoParser.getCommitId();
    }
}
